"""Text before it becomes a prompt: normalisation, then long-text chunking.

As in the release (``examples/generation.py``), the whole text is normalised
once and only then split into chunks, so the final period it may add goes at
the very end of the text, never at the end of a chunk.
"""

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
# The release's normalize_chinese_punctuation table: full-width marks to ASCII.
FULL_WIDTH = {
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
    "《": "<",
    "》": ">",
    "“": '"',
    "”": '"',
    "‘": "'",
    "’": "'",
    "、": ",",
    "—": "-",
    "…": "...",
    "·": ".",
    "「": '"',
    "」": '"',
    "『": '"',
    "』": '"',
}
FINAL = (".", "!", "?", ",", ";", '"', "'", "</SE_e>", "</SE>")
SPEAKER_LINE = re.compile(r"^\s*(\[SPEAKER\d+\])\s*")
SPAN_START, SPAN_END = "<SE_s>", "<SE_e>"
SOUND_EVENT = re.compile(r"<SE(?:_s)?>")  # one event: a point event or the start of a span
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "jr", "sr", "no"}
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def normalize(text: str) -> str:
    """The release examples' clean-up of a whole text.

    Full-width punctuation to ASCII (the release's table, applied in its
    order), parentheses to spaces, temperature units spelled out, sound-event
    tags to their tokens, whitespace collapsed within each line, and a final
    period where the text ends without punctuation.

    One difference: the release drops blank lines; here each run of blank
    lines stays as one, a paragraph break, which :func:`chunk_text` uses to
    end a chunk. No chunk holds one, so the model sees the same text.
    """
    for zh, en in FULL_WIDTH.items():
        text = text.replace(zh, en)
    text = text.replace("(", " ").replace(")", " ")
    text = text.replace("°F", " degrees Fahrenheit").replace("°C", " degrees Celsius")
    for tag, token in SOUND_EVENTS.items():
        text = text.replace(tag, token)
    paragraphs = []
    for paragraph in re.split(r"\n[ \t\r\f\v]*\n", text):
        lines = [" ".join(line.split()) for line in paragraph.splitlines() if line.strip()]
        if lines:
            paragraphs.append("\n".join(lines))
    text = "\n\n".join(paragraphs)
    if text and not text.endswith(FINAL):
        text += "."
    return text


def count_words(text: str) -> int:
    """Words, counting each CJK character as one."""
    return len(CJK.sub(" ", text).split()) + len(CJK.findall(text))


def sound_events(text: str) -> int:
    """How many sound events (``<SE>`` points and ``<SE_s>`` spans) a normalised text holds."""
    return len(SOUND_EVENT.findall(text))


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
        if len(words) == 1:
            if "<SE" in sentence:  # never cut inside a sound-event token
                return [sentence]
            # one long CJK run: cut between characters
            return [sentence[i : i + max_words] for i in range(0, len(sentence), max_words)]
        return [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)]
    out: list[str] = []
    for clause in clauses:
        if out and count_words(out[-1]) + count_words(clause) <= max_words:
            out[-1] += " " + clause
        else:
            out.extend(_split_long(clause, max_words))
    return out


def chunk_text(text: str, max_words: int = 60) -> list[str]:
    """Split normalised text into chunks of about ``max_words`` words for long-form speech.

    Chunks end at sentence ends, never inside a word; a paragraph break (blank
    line) ends a chunk. Lines starting with a ``[SPEAKERn]`` tag begin a
    speaker turn: a chunk may hold several turns, and a chunk that starts inside
    a turn repeats the turn's tag so the voice is known. A sound-event span
    (``<SE_s>`` ... ``<SE_e>``, e.g. music under speech) is never split: a
    chunk that holds its start runs on to its end, whatever its length.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    chunks: list[str] = []
    current, words, speaker, open_spans = "", 0, None, 0
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        if current and not open_spans:  # a paragraph break ends the chunk
            chunks.append(current)
            current, words = "", 0
        speaker = None
        for line in paragraph.splitlines():
            m = SPEAKER_LINE.match(line)
            if m:
                speaker, line = m.group(1), line[m.end() :]
            turn_start = bool(m)
            for sentence in split_sentences(line):
                pieces = [sentence] if open_spans else _split_long(sentence, max_words)
                for piece in pieces:
                    n = count_words(piece)
                    if current and words + n > max_words and not open_spans:
                        chunks.append(current)
                        current, words = "", 0
                        turn_start = True  # a new chunk inside a turn repeats the tag
                    sep = " "
                    if turn_start and speaker:
                        piece, sep = f"{speaker} {piece}", "\n"
                    current = f"{current}{sep}{piece}" if current else piece
                    words += n
                    turn_start = False
                    open_spans = max(
                        0, open_spans + piece.count(SPAN_START) - piece.count(SPAN_END)
                    )
    if current:
        chunks.append(current)
    return chunks
