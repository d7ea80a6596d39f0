"""Strict reading of VLM answers, and the mapping of free descriptions back to the taxonomy.

`parse_choice(text, letters, options)` returns the one option letter the text commits to, or
None. It never guesses: the earlier study looked for "the letter anywhere in the text", so
"ANSWER: D" counted as A. Here a letter counts only when it is *committed*:

- the whole answer (or a whole line) is the letter: "D", "(B)", "b)", "C.";
- it is marked as an option: "(B)", "[B]", "b)", "**B**";
- it follows an answer cue: "Answer: C", "The answer is D.", "Option B", "It's C";
- it starts the answer followed by punctuation: "D. Optical microscopy", "C: AFM";
- it is stated as the answer anywhere: "C is correct", "Final: C", "Therefore C.", or it is
  the reply's last sentence on its own ("... C").

"A" (and "I") followed by a word is an English article/pronoun ("A scanning electron
micrograph ...") and never counts. Then:

- exactly one distinct committed letter, inside `letters`, is the answer;
- two different committed letters ("A or B", "B/C", an echoed option list), a committed letter
  outside `letters`, or a refusal ("I cannot determine ...") give None;
- two answer statements that disagree ("The answer is B. ... Final answer: C") are a change
  of mind and give None: neither the first nor the last statement wins;
- a hedge that keeps a second option open ("probably C, though A is possible", "C, but B
  cannot be ruled out", "B... or maybe C") and a correction ("B. No wait, D.") give None;
  a second option that is excluded ("C, not A", "it is clearly not option A", "D, since it is
  not A or B", "B; the contrast rules out A and C") leaves the committed one standing;
- with no committed letter, an option's own text ("Scanning electron microscopy (SEM)", "SEM")
  decides when exactly one option is mentioned (mentions after "not", "rather than" ... are
  dropped); a committed letter whose option text contradicts another mentioned option gives None.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from microqa.data import taxonomy

_ARTICLES = {"A", "I"}  # single-letter English words that start sentences
# A standalone letter: not part of a word, "3D", "D's", "C-shaped".
_LETTER_END = r"(?![A-Za-z0-9'\-])"

_BOLD = re.compile(r"\*\*\s*[\(\[]?\s*([A-Za-z])\s*[\)\]]?\s*[.:]?\s*\*\*")
_BRACKETED = re.compile(r"[\(\[]\s*([A-Za-z])\s*[\)\]]")
_PAREN_AFTER = re.compile(r"(?<![A-Za-z0-9(\[])([A-Za-z])\)")
_CUE = re.compile(
    r"\b(?:answer|option|choice|letter|it'?s|it is|would be|should be|must be|has to be|"
    r"final|conclusion|result|response|verdict|selected|"
    r"i(?:'d| would)? (?:choose|select|pick|go with))\b"
    r"\s*(?:is|would be|should be|[:=\-–—])?\s*(?:option|choice|letter)?\s*[:\-]?\s*"
    r"[\(\[]?([A-Za-z])" + _LETTER_END,
    re.IGNORECASE,
)
# A conclusion drawn with a connective ("Therefore C.", "So, B!"): the letter closes the clause.
_CONCLUSION = re.compile(
    r"\b(?:therefore|hence|thus|so)\s*,?\s*[\(\[]?([A-Z])[\)\]]?(?=\s*(?:$|[.!,;]))",
    re.IGNORECASE,
)
# A statement that a letter is the answer, anywhere: "C is correct", "B is the best match".
_VERDICT = re.compile(
    r"(?<![A-Za-z0-9'])([A-Z])\s+is\s+(?:the\s+)?(?:most\s+likely\s+)?"
    r"(?:correct|right|answer|best)\b"
)
# The reply's last sentence is a bare letter ("The answer is B. ... C"): a restatement.
_LAST_SENTENCE = re.compile(r"(?:^|[.!?:;]|\.\.\.)\s*[\(\[]?([A-Z])[\)\]]?[.!]?\s*$")
_START = re.compile(r"^\s*([A-Z])(?=\s*(?:$|[.:,;!)\]]|\s[-–—]\s))")
# "C is correct" (not "C is not ..."; "A" and "I" are words)
_START_WORD = re.compile(r"^\s*([B-HJ-Z])\s+(?!is\s+not\b|isn.t\b)\w")
_WHOLE_LINE = re.compile(r"^\s*[\(\[]?\s*([A-Za-z])\s*[\)\]]?\s*[.!]?\s*$", re.MULTILINE)
_HEDGE = re.compile(
    r"(?<![A-Za-z0-9])([A-Za-z])[\)\]]?\s*(?:or|/|and|,|&|vs\.?|versus)\s*"
    r"(?:option\s*)?[\(\[]?([A-Za-z])" + _LETTER_END,
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"\b(?:i(?:'m| am) (?:sorry|unable|not able|not sure)|i (?:cannot|can't|can not)|"
    r"(?:unable|not able) to (?:determine|tell|identify|answer|say)|"
    r"(?:cannot|can't|can not) (?:be )?(?:determined?|tell|identify)|"
    r"(?:not possible|impossible) to (?:determine|tell|say)|"
    r"(?:not enough|insufficient) information|none of the (?:above|options)|"
    r"(?:don't|do not) know|unsure)\b",
    re.IGNORECASE,
)
_NEGATION = re.compile(
    r"\b(?:not|no|isn't|wasn't|never|neither|nor|rather than|instead of|unlike|except)\b"
    r"[^.;\n]{0,25}$",
    re.IGNORECASE,
)
_MARKDOWN = re.compile(r"[*_`#>]+")
# Just before a letter: it is excluded ("not A", "rules out A"), unless the exclusion is itself
# denied ("cannot rule out A", "B cannot be ruled out" is handled as an open cue below).
_EXCLUDED = re.compile(
    r"\b(?:not|isn't|neither|nor|unlike|except|rather than|instead of|"
    r"rules? out|ruled out|ruling out|exclud\w*)\b[^.;\n]{0,20}$",
    re.IGNORECASE,
)
_DENIED_EXCLUSION = re.compile(
    r"\b(?:cannot|can't|can not|could not|couldn't|not|don't|do not|won't)\s+"
    r"(?:be\s+)?(?:rule|ruled|exclude|excluded)\s+out\b[^.;\n]{0,20}$|"
    r"\b(?:cannot|can't|can not|could not|couldn't|don't|do not)\s+(?:exclude|be excluded)\b"
    r"[^.;\n]{0,20}$",
    re.IGNORECASE,
)
# A clause that keeps an option open: "A is possible", "could also be A", "or maybe C".
_OPEN = re.compile(
    r"\b(?:possibl[ey]|possibility|could|might|may|maybe|perhaps|plausible|alternatively|"
    r"or|either|likely|ruled out|rule out|exclude[d]?|also fits?|as well|too)\b",
    re.IGNORECASE,
)
# A change of mind: an option named after one of these replaces the first answer.
_CORRECTION = re.compile(
    r"\b(?:wait|actually|on second thought|on reflection|correction|i mean|scratch that|"
    r"let me reconsider|changing my answer|final answer)\b",
    re.IGNORECASE,
)
# A standalone capital letter naming an option; "A" and "I" only where no noun follows
# ("A is possible", "option A", "(A)", "A." but not "A TEM image").
_OPTION_MENTION = re.compile(
    r"(?:\b(?:option|choice|letter)\s+|[\(\[])?(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'\-])"
)
_AFTER_ARTICLE_LETTER = re.compile(
    r"\s*(?:$|[.,;:!?)\]]|\s*(?:is|was|could|might|may|would|seems?|looks?|remains?|also|"
    r"too|as well|cannot|can't|fits?|matches)\b)",
    re.IGNORECASE,
)
_CLAUSE_END = re.compile(r"[.;!?\n,]|\.\.\.|\s[-–—]\s")


def _excluded(text: str, position: int) -> bool:
    before = text[:position]
    return bool(_EXCLUDED.search(before)) and not _DENIED_EXCLUSION.search(before)


def _option_mentions(text: str, letters: Sequence[str]) -> list[tuple[int, str]]:
    """(position, letter) of every offered letter named as an option in `text`."""
    found = []
    for match in _OPTION_MENTION.finditer(text):
        letter = match.group(1)
        if letter not in letters:
            continue
        marked = match.group(0)[0] != letter  # "option A", "(A"
        if letter in _ARTICLES and not marked:
            if not _AFTER_ARTICLE_LETTER.match(text, match.end()):
                continue
        found.append((match.start(1), letter))
    return found


def _clause(text: str, position: int) -> str:
    starts = [m.end() for m in _CLAUSE_END.finditer(text, 0, position)]
    start = starts[-1] if starts else 0
    end = _CLAUSE_END.search(text, position + 1)
    return text[start : end.start() if end else len(text)]


def _second_option_kept_open(text: str, chosen: str, letters: Sequence[str]) -> bool:
    """Another offered option is named as still possible, or named after a change of mind."""
    correction = _CORRECTION.search(text)
    for position, letter in _option_mentions(text, letters):
        if letter == chosen or _excluded(text, position):
            continue
        if correction and correction.start() < position:
            return True
        if _OPEN.search(_clause(text, position)):
            return True
    return False


def _committed_letters(text: str) -> set[str]:
    found: set[str] = set()
    found.update(m.group(1) for m in _BOLD.finditer(text))
    plain = _MARKDOWN.sub(" ", text)
    found.update(m.group(1) for m in _BRACKETED.finditer(plain))
    found.update(m.group(1) for m in _PAREN_AFTER.finditer(plain))
    found.update(m.group(1) for m in _WHOLE_LINE.finditer(plain))
    found.update(m.group(1) for m in _VERDICT.finditer(plain))
    for match in _CONCLUSION.finditer(plain):
        if not _excluded(plain, match.start()):
            found.add(match.group(1))
    for match in (_START.match(plain), _START_WORD.match(plain), _LAST_SENTENCE.search(plain)):
        if match:
            found.add(match.group(1))
    for match in _CUE.finditer(plain):
        letter, rest = match.group(1), plain[match.end() :]
        if letter.upper() in _ARTICLES and re.match(r"[ \t]+[A-Za-z]", rest):
            continue  # "the answer is a thin film", "It is A scanning ..."
        if _excluded(plain, match.start()):
            continue  # "it is not option A", "rather than option B"
        found.add(letter)
    return {letter.upper() for letter in found}


def _aliases(option: str | Sequence[str]) -> list[str]:
    """An option's full text, its text without a parenthesis, and a parenthesised acronym
    ("Scanning electron microscopy (SEM)" -> "SEM"; "Optical (reflected)" gives no
    "reflected": a bare word is too weak a mention)."""
    names = [option] if isinstance(option, str) else list(option)
    out: list[str] = []
    for name in names:
        out.append(taxonomy.normalise(name))
        inner = re.search(r"\(([^)]+)\)", name)
        if inner:
            out.append(taxonomy.normalise(re.sub(r"\s*\([^)]*\)", "", name)))
            if re.fullmatch(r"[A-Z]{2,6}", inner.group(1).strip()):
                out.append(inner.group(1).strip().lower())
    return [a for a in dict.fromkeys(out) if a]


def _mentioned_options(text: str, options: Mapping[str, str | Sequence[str]]) -> set[str]:
    """Letters whose option text the answer mentions, without a negation just before it."""
    low = taxonomy.normalise(_MARKDOWN.sub(" ", text))
    spans: list[tuple[int, int, str]] = []
    for letter, option in options.items():
        for alias in _aliases(option):
            pattern = r"(?<![a-z0-9])" + re.escape(alias) + r"(?![a-z0-9])"
            spans += [(m.start(), m.end(), letter) for m in re.finditer(pattern, low)]
    mentioned = set()
    for start, end, letter in spans:
        inside_longer = any(
            s <= start and end <= e and (e - s) > (end - start) and other != letter
            for s, e, other in spans
        )
        if inside_longer or _NEGATION.search(low[:start]):
            continue
        mentioned.add(letter)
    return mentioned


def parse_choice(
    text: str | None,
    letters: Sequence[str],
    options: Mapping[str, str | Sequence[str]] | Sequence[str | Sequence[str]] | None = None,
) -> str | None:
    """The single option letter `text` commits to, or None (see the module docstring).

    `options` (optional) gives each letter's option text (a string, or several aliases), as a
    mapping or aligned with `letters`; it lets an answer that names the option be read.
    """
    if not text or not text.strip():
        return None
    letters = [str(letter).upper() for letter in letters]
    if _REFUSAL.search(text):
        return None
    text = text.replace("\u2019", "'")
    plain = _MARKDOWN.sub(" ", text)
    for match in _HEDGE.finditer(plain):
        first, second = match.group(1).upper(), match.group(2).upper()
        if first != second and first in letters and second in letters:
            if _excluded(plain, match.start()):
                continue  # "not A or B", "rules out A and C": both excluded
            return None  # "A or B", "B/C", "C, D"
    committed = _committed_letters(text)
    if options is not None and not isinstance(options, Mapping):
        options = dict(zip(letters, options, strict=True))
    mentioned = _mentioned_options(text, options) if options else set()
    if len(committed) > 1:
        return None
    if len(committed) == 1:
        (letter,) = committed
        if letter not in letters or (mentioned and mentioned != {letter}):
            return None
        if _second_option_kept_open(plain, letter, letters):
            return None
        return letter
    return mentioned.pop() if len(mentioned) == 1 else None


# --- free descriptions -> taxonomy -------------------------------------------------------------

_TECHNIQUE_PATTERNS: dict[str, str] = {
    taxonomy.SEM: r"\bsem\b|\bfegsem\b|scanning electron|secondary[- ]electron|"
    r"back-?scatter(?:ed)? electron|\bfib\b|focused ion beam",
    taxonomy.TEM: r"\btem\b|\bhrtem\b|\bhrem\b|\bstem\b|transmission electron",
    taxonomy.AFM: r"\bafm\b|atomic force",
    "Optical": r"optical micro|optical image|light micro|\blight microscope|metallograph|"
    r"polari[sz]ed light|reflected[- ]light|transmitted[- ]light|nomarski|"
    r"differential interference|optical (?:bright|dark)[- ]field",
}
_TRANSMITTED = re.compile(r"transmitted[- ]light|thin section|sensitive tint|in transmission")
_REFLECTED = re.compile(
    r"reflected[- ]light|nomarski|differential interference|\bdic\b|metallograph"
)
# Material words; precedence follows taxonomy.primary_category (composite, metal, ceramic, polymer).
_CATEGORY_PATTERNS: dict[str, str] = {
    taxonomy.COMPOSITE: r"composite",
    taxonomy.METAL: r"\bmetal|\balloy|\bsteel|\biron\b|alumini?um|copper|brass|bronze|titanium|"
    r"nickel|\bzinc\b|\btin\b|solder|magnesium|\bgold\b|\bsilver\b",
    taxonomy.CERAMIC: r"ceramic|\boxide|alumina|zirconia|\bsilica\b|silicon carbide|"
    r"silicon nitride|\bglass|porcelain|concrete|cement",
    taxonomy.POLYMER: r"polymer|plastic|polyethylene|polypropylene|polystyrene|nylon|rubber|"
    r"epoxy|\bresin|spherulit",
}


def _positive_mentions(text: str, patterns: Mapping[str, str]) -> list[str]:
    """Keys whose pattern occurs at least once without a negation just before it."""
    hits = []
    for key, pattern in patterns.items():
        if any(not _NEGATION.search(text[: m.start()]) for m in re.finditer(pattern, text)):
            hits.append(key)
    return hits


def map_description(text: str | None) -> tuple[str | None, str | None]:
    """(technique family, primary category) named by a free description; None where unclear.

    Technique: exactly one family must be named (two different ones -> None). Optical light
    microscopy goes to the transmitted family on transmission cues, else to reflected, the
    taxonomy's metallographic default; both cues -> None. Category: the taxonomy's precedence
    (composite, metal, ceramic, polymer) over the materials named, as for the records.
    """
    if not text:
        return None, None
    low = taxonomy.normalise(text)
    families = _positive_mentions(low, _TECHNIQUE_PATTERNS)
    technique = None
    if len(families) == 1:
        technique = families[0]
        if technique == "Optical":
            transmitted, reflected = bool(_TRANSMITTED.search(low)), bool(_REFLECTED.search(low))
            if transmitted and reflected:
                technique = None
            else:
                technique = (
                    taxonomy.OPTICAL_TRANSMITTED if transmitted else taxonomy.OPTICAL_REFLECTED
                )
    materials = _positive_mentions(low, _CATEGORY_PATTERNS)
    category = next((c for c in _CATEGORY_PATTERNS if c in materials), None)
    return technique, category


def keyword_recall(text: str | None, keywords: Iterable[str]) -> float | None:
    """Fraction of the record's expert keywords found in `text` (None without keywords).

    A keyword is found when its stem (a trailing plural 's' dropped) starts a word of the text,
    so "dendrite" finds "dendrites" and "lamella" finds "lamellae"; multi-word keywords match
    across spaces or hyphens.
    """
    keys = [taxonomy.normalise(k) for k in keywords if k and k.strip()]
    keys = list(dict.fromkeys(keys))
    if not keys:
        return None
    low = taxonomy.normalise(text or "")
    hits = 0
    for key in keys:
        stem = key[:-1] if len(key) > 4 and key.endswith("s") and not key.endswith("ss") else key
        pattern = r"(?<![a-z0-9])" + r"[\s-]+".join(map(re.escape, stem.split()))
        hits += bool(re.search(pattern, low))
    return hits / len(keys)
