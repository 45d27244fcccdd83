"""Text before it becomes a prompt: normalisation and long-text chunking."""

import re

# Sound-event tags of the release examples and the special tokens they map to.
SOUND_EVENTS = {
    "[laugh]": "<SE>[Laughter]</SE>",
    "[humming start]": "<SE_s>[Humming]</SE_s>",
    "[humming end]": "<SE_e>[Humming]</SE_e>",
    "[music start]": "<SE_s>[Music]</SE_s>",
    "[music end]": "<SE_e>[Music]</SE_e>",
    "[music]": "<SE>[Music]</SE>",
    "[sing start]": "<SE_s>[Singing]</SE_s>",
    "[sing end]": "<SE_e>[Singing]</SE_e>",
    "[applause]": "<SE>[Applause]</SE>",
    "[cheering]": "<SE>[Cheering]</SE>",
    "[cough]": "<SE>[Cough]</SE>",
}
# Full-width punctuation the model reads better in its ASCII form.
FULL_WIDTH = str.maketrans(
    {
        "，": ", ",
        "。": ".",
        "：": ":",
        "；": ";",
        "？": "?",
        "！": "!",
        "（": "(",
        "）": ")",
        "【": "[",
        "】": "]",
        "“": '"',
        "”": '"',
        "‘": "'",
        "’": "'",
        "、": ",",
        "—": "-",
        "…": "...",
        "「": '"',
        "」": '"',
    }
)
FINAL = (".", "!", "?", ",", ";", '"', "'", "</SE_e>", "</SE>")
SPEAKER_LINE = re.compile(r"^\s*(\[SPEAKER\d+\])\s*")
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "jr", "sr", "no"}
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def normalize(text: str) -> str:
    """The release examples' clean-up, on one chunk of text.

    Full-width punctuation to ASCII, parentheses to spaces, temperature units
    spelled out, sound-event tags to their tokens, whitespace collapsed (line
    breaks kept, blank lines dropped), and a final period where the text ends
    without punctuation.
    """
    text = text.translate(FULL_WIDTH)
    text = text.replace("(", " ").replace(")", " ")
    text = text.replace("°F", " degrees Fahrenheit").replace("°C", " degrees Celsius")
    for tag, token in SOUND_EVENTS.items():
        text = text.replace(tag, token)
    text = "\n".join(" ".join(line.split()) for line in text.splitlines() if line.strip())
    if text and not text.endswith(FINAL):
        text += "."
    return text


def count_words(text: str) -> int:
    """Words, counting each CJK character as one."""
    return len(CJK.sub(" ", text).split()) + len(CJK.findall(text))


def split_sentences(text: str) -> list[str]:
    """Split at sentence ends (. ! ? and CJK stops), keeping abbreviations whole."""
    out, start = [], 0
    for m in re.finditer(r"[.!?…]+[\"')\]]*(?=\s)|[。！？]+", text):
        word = text[start : m.start()].split()[-1:] or [""]
        if m.group() == "." and word[0].lower().rstrip(".") in ABBREVIATIONS:
            continue
        out.append(text[start : m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


def _split_long(sentence: str, max_words: int) -> list[str]:
    """Break an over-long sentence at clause marks, else between words."""
    if count_words(sentence) <= max_words:
        return [sentence]
    clauses = [c.strip() for c in re.split(r"(?<=[,;:])\s+", sentence) if c.strip()]
    if len(clauses) == 1:
        words = sentence.split()
        if len(words) == 1:  # one long CJK run: cut between characters
            return [sentence[i : i + max_words] for i in range(0, len(sentence), max_words)]
        return [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)]
    out = []
    for clause in clauses:
        if out and count_words(out[-1]) + count_words(clause) <= max_words:
            out[-1] += " " + clause
        else:
            out.extend(_split_long(clause, max_words))
    return out


def chunk_text(text: str, max_words: int = 60) -> list[str]:
    """Split text into chunks of at most ``max_words`` words for long-form speech.

    Chunks end at sentence ends, never inside a word; a paragraph break (blank
    line) always ends a chunk. Lines starting with a ``[SPEAKERn]`` tag begin a
    speaker turn: a chunk may hold several turns, and a chunk that starts inside
    a turn repeats the turn's tag so the voice is known.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    chunks: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        current, words, speaker = "", 0, None
        for line in paragraph.splitlines():
            m = SPEAKER_LINE.match(line)
            if m:
                speaker, line = m.group(1), line[m.end() :]
                turn_start = True
            else:
                turn_start = False
            for sentence in split_sentences(line):
                for piece in _split_long(sentence, max_words):
                    n = count_words(piece)
                    if current and words + n > max_words:
                        chunks.append(current)
                        current, words = "", 0
                        turn_start = True  # a new chunk inside a turn repeats the tag
                    if turn_start and speaker:
                        piece = f"{speaker} {piece}"
                        sep = "\n"
                    else:
                        sep = " "
                    current = f"{current}{sep}{piece}" if current else piece
                    words += n
                    turn_start = False
        if current:
            chunks.append(current)
    return chunks
