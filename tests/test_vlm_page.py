"""report/vlm_page.py: notebook 04's sections decide from the `weights` column what to show.
Random weights: one stamped line per section and one example, built from the data; real
weights: the full tables. Synthetic answers as in test_vlm_report."""

from __future__ import annotations

import pandas as pd
import pytest

from microqa.report import vlm_page
from microqa.vlm import report, scoring
from tests.test_vlm_report import FOLDS, RECORDS, _study

LABELS = ["sample data", report.RANDOM_LABEL]


def _mixed() -> pd.DataFrame:
    """The same 8 images answered by a random stand-in and by a 'pretrained' model."""
    random = _study()
    real = _study().assign(model="org/real-model", weights="pretrained")
    return pd.concat([random, real], ignore_index=True)


@pytest.fixture(scope="module")
def qa_random():
    answers = _study()
    return answers, report.qa_table(answers, fold=FOLDS, records=RECORDS, n_boot=20)


def test_random_weights_show_one_stamped_line_and_one_example_not_the_table(qa_random):
    answers, qa = qa_random
    parts = vlm_page.qa_parts(qa, answers, LABELS)
    assert [p.table is None for p in parts] == [True, True]  # no table at all
    line, example = parts[0].markdown, parts[1].markdown
    assert vlm_page._span(pd.Series([-0.33, 0.5])) == "-0.33 to 0.50"
    assert "\n" not in line and "[SAMPLE DATA; RANDOM WEIGHTS]" in line
    (row,) = qa.itertuples()
    # the line's numbers are the table's: one row, its n and balanced accuracy; chance 1/4
    assert "over their 1 rows" in line and f"n = {row.n} images" in line
    assert f"balanced accuracy is {row.balanced_accuracy:.2f} (chance 0.25)" in line
    # the example: image 0's question in the taxonomy order, the letters' probabilities
    assert "micrograph #0" in example and "score mode" in example
    assert "> What class of material is shown in this micrograph?" in example
    first = answers[(answers["micrograph_no"] == 0) & (answers["rotation"] == 0)].iloc[0]
    assert f"read this as **{first['prediction']}**; the truth is **{first['truth']}**" in example


def test_real_weights_show_the_table_and_no_stand_in_line():
    answers = _mixed()
    qa = report.qa_table(answers, fold=FOLDS, records=RECORDS, n_boot=20)
    parts = vlm_page.qa_parts(qa, answers, LABELS)
    table = parts[0].table
    assert list(table.columns) == report.QA_VIEW
    assert set(table["model"]) == {"org/real-model"}  # the real rows, in full
    assert "RANDOM WEIGHTS" not in parts[0].caption and "SAMPLE DATA" in parts[0].caption
    assert "m ran as random-weight stand-ins" in parts[1].markdown  # the stand-in: one line
    only_real = answers[answers["weights"] == "pretrained"]
    qa_real = qa[qa["weights"] == "pretrained"]
    assert [p.table is not None for p in vlm_page.qa_parts(qa_real, only_real, LABELS)] == [True]


def test_a_table_without_weights_is_an_error():
    with pytest.raises(ValueError, match="no 'weights' column"):
        vlm_page.stand_in(pd.DataFrame({"model": ["m"]}))


def test_free_text_drops_what_a_reader_cannot_see_and_escapes_markup():
    text = "A\ufffd\ufffd lamellar\x00 *eutectic* <b>|</b>\n\n in SEM"
    assert vlm_page.printable(text) == ("A lamellar *eutectic* <b>|</b> in SEM", 3)
    shown = vlm_page.readable(text)
    assert shown == (
        r"A lamellar \*eutectic\* &lt;b&gt;\|&lt;/b&gt; in SEM [3 unprintable characters dropped]"
    )
    assert vlm_page.readable("\ufffd\ufffd") == "" and vlm_page.readable(float("nan")) == ""
    assert vlm_page.readable("x" * 300, limit=10) == "x" * 9 + "…"


def test_the_generate_example_shows_the_raw_reply_and_the_parse():
    answers = _study(mode="generate")
    answers["raw_text"] = "The answer is \ufffd\ufffd C"
    answers.loc[:, "prediction"] = None
    example = vlm_page.example_question(answers, LABELS)
    assert "It wrote: “The answer is C [2 unprintable characters dropped]”." in example
    assert "read this as **no answer**" in example and "probabilities" not in example


def test_confusion_line_says_what_the_stand_ins_answered():
    decided = scoring.decisions(_study(), fold=FOLDS)
    decided.loc[decided.index[:2], "prediction"] = None
    (part,) = vlm_page.confusion_parts(decided, LABELS)
    top = decided["prediction"].value_counts()
    assert "no answer on 25% of 8 decisions" in part.markdown
    assert f"most frequent answer was {top.index[0]} ({top.iloc[0]} of 8" in part.markdown
    real = decided.assign(weights="pretrained")
    assert vlm_page.confusion_parts(real, LABELS) == []


def test_mistakes_sentence_counts_answered_wrong_and_unanswered():
    mine = pd.DataFrame(
        {"truth": ["SEM", "SEM", "TEM", "AFM"], "prediction": ["SEM", "TEM", None, None]}
    )
    assert vlm_page.mistakes_sentence("m", mine) == (
        "m answered 2 of 4 technique images, 1 of them wrongly; the others got no answer "
        "(letter mass below the threshold)"
    )


def test_position_bias_and_agreement_lines_come_from_their_tables():
    bias = report.position_bias_table(_study(skill=0.0))  # letter A always chosen
    (line,) = vlm_page.position_bias_parts(bias, LABELS)
    assert "on one letter ranged 0.00–1.00 (each letter held the truth 0.25" in line.markdown
    assert "letter A by m (category, 100%)" in line.markdown
    score, generate = _study(), _study(mode="generate")
    answers = pd.concat([score, generate], ignore_index=True)
    agreement = report.agreement_table(answers, scoring.decisions(answers, fold=FOLDS))
    (line,) = vlm_page.agreement_parts(agreement, LABELS)
    assert "agreed on a share of 0.00 of the images (8 per row)" in line.markdown
    shown = vlm_page.agreement_parts(agreement.assign(weights="pretrained"), LABELS)
    assert len(shown) == 1 and shown[0].table is not None


def test_rotation_effect_real_rows_keep_their_table_text():
    effect = report.rotation_effect_table(_mixed(), fold=FOLDS)
    text, line = (p.markdown for p in vlm_page.rotation_effect_parts(effect, LABELS))
    assert "| real-model | category / study | none | 8 | 0.250 | 1.000 | +0.750 |" in text
    assert "| m |" not in text
    assert "changed the stand-ins' balanced accuracy by 0.75 over 1 rows" in line


def test_description_line_and_one_printable_example():
    described = pd.DataFrame(
        {
            "model": ["m"],
            "weights": ["random"],
            "n": [12],
            "technique_accuracy": [0.0],
            "technique_unmapped_rate": [1.0],
            "keyword_recall_mean": [0.05],
        }
    )
    said = pd.DataFrame(
        {
            "model": ["m", "m"],
            "weights": ["random"] * 2,
            "micrograph_no": [7, 3],
            "raw_text": ["second", "\ufffd\x07 garbled [x]"],
        }
    )
    line, example = (p.markdown for p in vlm_page.description_parts(described, said, LABELS))
    assert "described 12 images each; technique accuracy 0.00, unmapped 1.00" in line
    assert example == (
        "For example, m on micrograph #3: “garbled \\[x\\] [2 unprintable characters dropped]”"
    )
