"""What notebook 04's page shows, decided from the data: each section in full for models with
real weights, and ONE stamped line for models that ran with random weights (the offline tiny
stand-ins), whose tables of near-chance numbers, all-"no answer" confusion matrices and
mistake galleries teach a reader nothing. The QA section adds ONE example: a question as the
model saw it, what it answered, and how the study read the answer, so a reader still learns
how the stage works. Which rows are stand-ins is the `weights` column (`vlm.base`), never a
guess. Saving is not decided here: every table and figure is written as before (`plots`).

Each `section` returns its `Part`s (tested without a notebook); `show` displays them.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from microqa import provenance, publishing
from microqa.clip import slug
from microqa.compare.methods import short_name
from microqa.data import taxonomy
from microqa.report import answer_galleries, plots
from microqa.run import Run
from microqa.vlm import figures, questions, report

PRETRAINED = "pretrained"  # vlm.base: a backend's weights are "pretrained" or "random"


@dataclass(frozen=True)
class Part:
    """One thing a page shows: Markdown text, or a table for people under its caption."""

    markdown: str = ""
    table: pd.DataFrame | None = None
    caption: str = ""


def show(parts: Sequence[Part]) -> None:
    """Display `parts` in a notebook (nothing outside one)."""
    if not plots._in_notebook():
        return
    from IPython.display import Markdown, display

    for part in parts:
        if part.table is not None:
            plots.show_table(part.table, part.caption)
        else:
            display(Markdown(part.markdown))


def stand_in(table: pd.DataFrame) -> pd.Series:
    """The rows a random-weight model produced (True), from the table's `weights` column."""
    if "weights" not in table.columns:
        raise ValueError("the table has no 'weights' column: cannot tell real from random models")
    return table["weights"] != PRETRAINED


def real_labels(labels: Sequence[str]) -> list[str]:
    """The substitute labels of the real-weight rows: the data's, without 'random weights'."""
    return [label for label in labels if label != report.RANDOM_LABEL]


def _models(table: pd.DataFrame) -> str:
    names = [short_name(m) for m in dict.fromkeys(table["model"])]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _stamped_line(labels: Sequence[str], what: str, text: str, saved: str) -> str:
    """The one line a section shows for its random-weight rows."""
    head = provenance.stamp(what, list(labels) or [report.RANDOM_LABEL])
    return f"**{head}:** {text} Not shown, since random weights measure nothing; {saved}"


def _saved(run: Run | None, names: str) -> str:
    where = f" in `{publishing.relative(run.destination.tables)}/`" if run is not None else ""
    return f"the full results are saved as {names}{where}."


def _table_parts(
    table: pd.DataFrame,
    *,
    caption: str,
    labels: Sequence[str],
    what: str,
    summary: str,
    saved: str,
    columns: Sequence[str] | None = None,
) -> list[Part]:
    """The real rows as a table (only `columns` if given), the stand-ins as one line."""
    random = stand_in(table)
    parts = []
    if (~random).any():
        real = table[~random]
        shown = real[list(columns)] if columns else real
        parts.append(Part(table=shown, caption=provenance.stamp(caption, real_labels(labels))))
    if random.any():
        parts.append(Part(_stamped_line(labels, what, summary, saved)))
    return parts


def _span(values: pd.Series, *, counts: bool = False) -> str:
    """The range of `values` as a line states it: "0.20–0.31", "0.25", or "12" (`counts`)."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return "–"
    low, high = (f"{v:.0f}" if counts else f"{v:.2f}" for v in (values.min(), values.max()))
    if low == high:
        return low
    return f"{low} to {high}" if values.min() < 0 else f"{low}–{high}"


def _chance(tasks: Sequence[str]) -> str:
    return _span(pd.Series([taxonomy.chance(t) for t in dict.fromkeys(tasks)]))


# --- the sections, in the page's order -------------------------------------------------------


def qa_parts(
    qa: pd.DataFrame, answers: pd.DataFrame, labels: Sequence[str], *, run: Run | None = None
) -> list[Part]:
    """The QA table (`report.qa_view` columns) and, for random weights, one line and one
    example question."""
    random = qa[stand_in(qa)]
    summary = (
        f"{_models(random)} ran as random-weight stand-ins; over their {len(random)} rows "
        "(model x task x prompt set x context x mode, "
        f"n = {_span(random['n'], counts=True)} images each) "
        f"balanced accuracy is {_span(random['balanced_accuracy'])} (chance "
        f"{_chance(random['task'])})."
        if len(random)
        else ""
    )
    parts = _table_parts(
        qa,
        caption="VLM multiple-choice QA (forced choice; every option order)",
        labels=labels,
        what="Multiple-choice QA",
        summary=summary,
        saved=_saved(run, "`vlm_qa.csv` and `vlm_qa.md`"),
        columns=report.QA_VIEW,
    )
    if len(random):
        sets = questions.with_wording(run.profile.vlm_questions) if run is not None else None
        parts.append(Part(example_question(answers[stand_in(answers)], labels, sets=sets)))
    return parts


def example_question(
    answers: pd.DataFrame, labels: Sequence[str] = (), *, sets: questions.PromptSets | None = None
) -> str:
    """ONE question as the model saw it, its raw answer and what the study read from it:
    the first image's technique question (fixed option order, no context) of the first model,
    so the page shows the same example on every run of the same data. `sets`: the run's
    wording (`questions.with_wording`)."""
    pool = answers.sort_values(["model", "micrograph_no", "mode", "rotation"], kind="stable")
    preferred = pool[(pool["context"] == "none") & (pool["rotation"] == 0)]
    row = (preferred if len(preferred) else pool).iloc[0]
    classes = str(row["permutation"]).split("|")
    letters = [chr(ord("A") + i) for i in range(len(classes))]
    asked = questions.build_question(
        row["task"], row["prompt_set"], rotation=int(row["rotation"]), sets=sets
    )
    if list(asked.classes) == classes and row["context"] == "none":
        prompt = asked.prompt
    else:  # a permuted order or a CLIP context: the options as they were shown
        texts = questions.prompt_set(row["task"], row["prompt_set"], sets).option_text
        prompt = "\n".join(f"{x}) {texts[c]}" for x, c in zip(letters, classes, strict=True))
    quoted = "\n".join(f"> {escape(line)}  " for line in prompt.splitlines() if line.strip())
    model = short_name(row["model"])
    said = readable(row["raw_text"])
    lines = [
        f"**{provenance.stamp('One question as the model saw it', list(labels))}** "
        f"(micrograph #{int(row['micrograph_no'])}, {row['mode']} mode, {model}):",
        "",
        quoted,
        "",
    ]
    if row["mode"] == "score":
        probabilities = json.loads(row["probabilities"]) if row["probabilities"] else {}
        by_letter = " · ".join(
            f"{x} {probabilities.get(c, float('nan')):.2f}"
            for x, c in zip(letters, classes, strict=True)
        )
        lines.append(
            f"The model's next-token probabilities of the letters, renormalised: {by_letter} "
            f"(the letters held {float(row['letter_mass']):.2g} of all probability)."
        )
    if said:
        lines.append(f"It wrote: “{said}”.")
    elif row["mode"] == "generate":
        lines.append("It wrote nothing printable.")
    reading = row["prediction"] if isinstance(row["prediction"], str) else "no answer"
    lines.append(f"The study read this as **{reading}**; the truth is **{row['truth']}**.")
    return "\n".join(lines)


NON_PRINTABLE = {"Cc", "Cf", "Cn", "Co", "Cs"}  # control, format, unassigned, private, surrogate


def printable(text) -> tuple[str, int]:
    """A model's free text without the characters a reader cannot see (controls, U+FFFD
    replacement characters of bytes that decoded to nothing), whitespace collapsed; and how
    many characters were dropped."""
    if not isinstance(text, str):
        return "", 0
    kept = [
        ch
        for ch in text
        if ch.isspace() or (ch != "\ufffd" and unicodedata.category(ch) not in NON_PRINTABLE)
    ]
    return " ".join("".join(kept).split()), len(text) - len(kept)


def readable(text, limit: int = 160) -> str:
    """`printable` text as Markdown shows it literally: cut at `limit` characters, escaped,
    with the number of characters dropped."""
    words, dropped = printable(text)
    if len(words) > limit:
        words = words[: limit - 1].rstrip() + "…"
    note = f" [{dropped} unprintable characters dropped]" if dropped else ""
    return escape(words) + note if words else ""


def escape(text: str) -> str:
    """Text shown literally in Markdown: HTML special characters and Markdown markup escaped."""
    return re.sub(r"([\\`*_\[\]#|~>])", r"\\\1", html.escape(text, quote=False))


def accuracy(run: Run, qa: pd.DataFrame, labels: Sequence[str], *, mode: str) -> None:
    """Save the accuracy figure; show it when some model has real weights."""
    part = qa[qa["mode"] == mode]
    shown = bool((~stand_in(part)).any())
    plots.save_figure(run, figures.accuracy_figure(part, labels), "vlm_accuracy", show=shown)


def confusion_parts(decided: pd.DataFrame, labels: Sequence[str]) -> list[Part]:
    """For random weights: what the stand-ins answered (their most frequent answer, how often
    they gave none), instead of matrices that are mostly one column."""
    random = decided[stand_in(decided)]
    if random.empty:
        return []
    answered = random["prediction"].dropna()
    top = answered.value_counts()
    favourite = (
        f"their most frequent answer was {top.index[0]} ({top.iloc[0]} of {len(random)} decisions)"
        if len(top)
        else "they never gave an answer"
    )
    text = (
        f"{_models(random)} gave no answer on {random['prediction'].isna().mean():.0%} of "
        f"{len(random)} decisions (abstained below the letter-mass threshold or unreadable); "
        f"{favourite}."
    )
    return [Part(_stamped_line(labels, "Confusion matrices", text, "the figures are saved."))]


def confusions(
    run: Run, decided: pd.DataFrame, jobs: Sequence[tuple[str, str]], labels: Sequence[str]
) -> None:
    """Save one confusion figure per task and prompt set; show them when some model has real
    weights, else one line."""
    shown = bool((~stand_in(decided)).any())
    for task, prompt_set in jobs:
        fig = figures.confusion_figure(decided, task, prompt_set, labels)
        plots.save_figure(run, fig, f"vlm_confusion_{task}_{prompt_set}", show=shown)
    if not shown:
        show(confusion_parts(decided, labels))


def mistakes(run: Run, records: pd.DataFrame, decided: pd.DataFrame, labels: Sequence[str]) -> None:
    """Per model, the most confident mistakes on the technique task (no context): saved for
    every model, shown for models with real weights; one line for the stand-ins."""
    stand_ins = []
    for model in dict.fromkeys(decided["model"]):
        mine = report.scored_decisions(decided, model, "technique")
        if mine.empty:
            continue  # generate mode: no confidence to rank by
        random = bool(stand_in(decided[decided["model"] == model]).any())
        gallery = answer_galleries.confident_mistakes(
            records,
            mine,
            short_name(model),
            classes=[c for c in taxonomy.TASKS["technique"][1] if (mine["truth"] == c).any()],
            labels=labels if random else real_labels(labels),
        )
        gallery.save(run, f"gallery_vlm_mistakes_{slug(short_name(model))}", show=not random)
        if random:
            stand_ins.append(mistakes_sentence(short_name(model), mine))
    if stand_ins:
        text = "; ".join(stand_ins) + "."
        show([Part(_stamped_line(labels, "Most confident mistakes", text, "galleries saved."))])


def mistakes_sentence(model: str, mine: pd.DataFrame) -> str:
    """How one model's technique answers split (`report.scored_decisions` rows)."""
    answered = mine["prediction"].notna()
    wrong = answered & (mine["prediction"] != mine["truth"])
    return (
        f"{model} answered {int(answered.sum())} of {len(mine)} technique images, "
        f"{int(wrong.sum())} of them wrongly; the others got no answer (letter mass below "
        "the threshold)"
    )


def position_bias_parts(bias: pd.DataFrame, labels: Sequence[str]) -> list[Part]:
    """Chosen vs true share per option letter; for the stand-ins, the letter they favoured."""
    random = bias[stand_in(bias)]
    text = ""
    if len(random):
        top = random.loc[random["chosen_share"].idxmax()]
        text = (
            f"the share of {_models(random)}'s answers on one letter ranged "
            f"{_span(random['chosen_share'])} (each letter held the truth "
            f"{_span(random['truth_share'])} of the time); most favoured: letter "
            f"{top['position']} by {short_name(top['model'])} ({top['task']}, "
            f"{top['chosen_share']:.0%})."
        )
    return _table_parts(
        bias,
        caption="VLM answers by option position",
        labels=labels,
        what="Position bias",
        summary=text,
        saved="the full table is saved as `vlm_position_bias.csv`.",
    )


def rotation_effect_parts(effect: pd.DataFrame, labels: Sequence[str]) -> list[Part]:
    """What asking every option order changed (`report.rotation_readme_text` on the real rows);
    for the stand-ins, the range of the change."""
    random = stand_in(effect)
    parts = []
    if (~random).any():
        parts.append(Part(report.rotation_readme_text(effect[~random])))
    if random.any():
        text = (
            f"asking every option order changed the stand-ins' balanced accuracy by "
            f"{_span(effect.loc[random, 'balanced_accuracy_change'])} over "
            f"{int(random.sum())} rows."
        )
        saved = "the full table is saved as `vlm_rotation_effect.csv`."
        parts.append(Part(_stamped_line(labels, "Every option order", text, saved)))
    return parts


def agreement_parts(agreement: pd.DataFrame, labels: Sequence[str]) -> list[Part]:
    """Score vs generate mode on the agreement subset; for the stand-ins, how often they
    agreed and how often generate mode was unreadable."""
    random = agreement[stand_in(agreement)]
    text = ""
    if len(random):
        text = (
            f"score and generate mode agreed on a share of {_span(random['agreement'])} of "
            f"the images ({_span(random['n_images'], counts=True)} per row); generate mode's "
            f"replies were unparseable {_span(random['generate_unparseable_rate'])} of the time."
        )
    return _table_parts(
        agreement,
        caption="Score vs generate mode on the agreement subset",
        labels=labels,
        what="Score vs generate mode",
        summary=text,
        saved="the full table is saved as `vlm_score_generate_agreement.csv`.",
    )


def description_parts(
    described: pd.DataFrame, descriptions: pd.DataFrame, labels: Sequence[str]
) -> list[Part]:
    """The open question mapped to the taxonomy; for the stand-ins, one line and one of their
    descriptions (unprintable characters dropped)."""
    random = described[stand_in(described)]
    text = ""
    if len(random):
        text = (
            f"{_models(random)} described {_span(random['n'], counts=True)} images each; "
            f"technique accuracy {_span(random['technique_accuracy'])}, unmapped "
            f"{_span(random['technique_unmapped_rate'])}, expert-keyword recall "
            f"{_span(random['keyword_recall_mean'])}."
        )
    parts = _table_parts(
        described,
        caption="VLM open question mapped to the taxonomy, and expert-keyword recall",
        labels=labels,
        what="The open question",
        summary=text,
        saved="the full table is saved as `vlm_descriptions.csv`.",
    )
    said = descriptions[stand_in(descriptions)].sort_values(["model", "micrograph_no"])
    if len(said):
        row = said.iloc[0]
        words = readable(row["raw_text"], limit=240) or "nothing printable"
        parts.append(
            Part(
                f"For example, {short_name(row['model'])} on micrograph "
                f"#{int(row['micrograph_no'])}: “{words}”"
            )
        )
    return parts


def descriptions(
    run: Run,
    records: pd.DataFrame,
    described: pd.DataFrame,
    said: pd.DataFrame,
    labels: Sequence[str],
) -> None:
    """The description table and the gallery of descriptions beside their images (saved for
    every model, shown when some model has real weights)."""
    show(description_parts(described, said, labels))
    real = said[~stand_in(said)]
    text = said["raw_text"].map(lambda t: printable(t)[0] or "(nothing printable)")
    gallery = answer_galleries.descriptions(records, said.assign(text=text), labels=labels)
    gallery.save(run, "gallery_vlm_descriptions", show=len(real) > 0)
