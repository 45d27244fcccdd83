"""One request's work, as a job on the batch: its speakers, then each chunk of its
text spoken in turn (earlier chunks replayed as context, as the release does),
its audio streamed out as the codec makes it final or decoded whole at the end."""

import time

import mlx.core as mx
import numpy as np

from higgs_cli.generation import Generation, quiet
from higgs_cli.prompt import speaker_tags
from higgs_cli.runner import Work
from higgs_cli.settings import NoAudio, Request, Settings
from higgs_cli.speech import Progress, Speech
from higgs_cli.text import chunk_text, count_words, normalize, sound_events
from higgs_cli.voicing import Voicing
from higgs_core import Batch
from higgs_sampling import CodeColumns, frames_for_codes

# Frames of codes handed to the stream decoder at a time.
PUSH_FRAMES = 4
# A chunk's frame budget guards against runaway generation: ~1 s per word is 2-3x a
# natural pace. Sound events (humming, music, laughter) are not words: each gets its
# own allowance, up to the 2048 frames the release allows one call (max_new_tokens).
BASE_SECONDS, WORD_SECONDS, EVENT_SECONDS, EVENT_FRAMES_CAP = 5.0, 1.0, 20.0, 2048
# For the most positions a row can hold: a text turn's tokens at most, per word and
# of markup (English takes ~1.3 a word), and the system turn with a scene.
TURN_TOKENS_PER_WORD, TURN_TOKENS, SYSTEM_TOKENS = 3, 16, 256


class Speaking:
    """Requests into speech, for one model and codec."""

    def __init__(self, codec, generation: Generation, voicing: Voicing, *, bos_id: int):
        self.codec = codec
        self.generation = generation
        self.voicing = voicing
        self.bos_id = bos_id
        self.num_codebooks = codec.num_codebooks
        self.sample_rate = codec.sample_rate
        self.frame_rate = codec.frame_rate

    def max_row_positions(self, settings: Settings) -> int:
        """About the most positions one request's row holds at once: the system turn,
        a reference of the longest recording taken with its transcript (a served
        request has one voice), then the chunks replayed as context and the one being
        spoken, each at its frame budget (which the model seldom reaches)."""
        words = settings.chunk_words
        turn = TURN_TOKENS + TURN_TOKENS_PER_WORD * words
        chunk = turn + self.chunk_frames(" ".join(["word"] * words))
        ref = turn + int(self.voicing.max_ref_seconds * self.frame_rate)
        return SYSTEM_TOKENS + ref + (settings.context_chunks + 1) * chunk

    def chunk_frames(self, text: str) -> int:
        """A chunk's frame budget: time for its words, and for its sound events."""
        words = BASE_SECONDS + WORD_SECONDS * count_words(text)
        events = EVENT_SECONDS * sound_events(text)
        seconds = max(words, min(words + events, EVENT_FRAMES_CAP / self.frame_rate))
        return max(1, int(seconds * self.frame_rate))

    def job(self, request: Request, batch: Batch, emit, progress, tell) -> Work:
        """The work of one request on ``batch``: PCM to ``emit`` as it is made (or
        decoded whole at the end, when ``emit`` is None); returns the :class:`Speech`."""
        settings = request.settings
        warnings: list[str] = []
        tell = tell or quiet

        def warn(message: str):
            warnings.append(message)
            tell(message)

        start = time.perf_counter()
        speakers = yield from self.voicing.speakers(request, batch, warn)
        tags = speaker_tags(request.text)  # the whole text's, for every chunk's prompt
        pieces = chunk_text(normalize(request.text), settings.chunk_words)
        budget = int(settings.max_seconds * self.frame_rate)  # audio frames left for the text
        context: list[tuple[str, np.ndarray]] = []
        decoder = self.codec.stream_decoder() if emit else None
        done: list[tuple] = []  # (piece, prompt, result, host codes) of each chunk spoken
        sent: list[np.ndarray] = []
        audio_seconds = 0.0

        def report(i, frames, max_frames, seconds, finished=False):
            if progress:
                elapsed = time.perf_counter() - start
                before = sum(res.num_frames for _, _, res, _ in done[:i])  # the chunks spoken
                progress(
                    Progress(
                        i,
                        len(pieces),
                        frames,
                        max_frames,
                        seconds,
                        elapsed,
                        finished,
                        text_frames=before + frames,
                    )
                )

        def push(codes):
            pcm = np.array(decoder.push(codes), dtype=np.float32)
            if pcm.size:
                sent.append(pcm)
                emit(pcm)

        for i, piece in enumerate(pieces):
            if budget < 1:
                warn(
                    f"--max-seconds {settings.max_seconds:g} reached: {len(pieces) - i} of "
                    f"{len(pieces)} chunks left unspoken"
                )
                break
            own = self.chunk_frames(piece)
            # What is left of --max-seconds is audio: the delay ramp and the column the
            # release drops are frames to sample on top of it.
            max_frames = min(own, frames_for_codes(budget, self.num_codebooks))
            prompt = self.generation.prompt(piece, speakers, context, settings, tags)
            columns = CodeColumns(self.num_codebooks, self.codec.codebook_size)
            columns.push(mx.full((self.num_codebooks,), self.bos_id))

            def on_frames(frames, n, last, i=i, m=max_frames, s=audio_seconds, columns=columns):
                for frame in frames:
                    columns.push(frame)
                columns.last_frame = last  # so no final column waits to see if it is the last
                if n // 5 > (n - len(frames)) // 5:
                    # Audio is the columns that are final (the delay ramp's frames are
                    # not yet audio), so the figure only grows, into the chunk's total.
                    report(i, n, m, s + max(columns.ready, 0) / self.frame_rate)
                if not decoder:
                    return
                # A few columns a push: the stream decoder's cost per push is mostly
                # fixed (5 frames a push run 2x faster than 1), for 160 ms more latency;
                # until audio first comes out, as soon as the decoder can give some.
                want = PUSH_FRAMES
                if not sent:
                    want = max(1, min(want, decoder.first_audio_frames - decoder.frames_in))
                if (ready := columns.take(want)) is not None:
                    push(ready)

            res = yield from self.generation.frames(
                batch,
                prompt,
                settings,
                settings.chunk_seed(i),
                max_frames,
                on_frames,
                folder=self.voicing.prefix_folder(request),
                warn=warn,
            )
            columns.last_frame = res.num_frames  # whatever ended it
            if decoder and (rest := columns.take()) is not None:
                push(rest)
            codes = np.array(res.codes, dtype=np.int32)  # on the host, for prompts and Speech
            done.append((piece, prompt, res, codes))
            audio_seconds += codes.shape[1] / self.frame_rate
            budget -= codes.shape[1]
            keep = settings.context_chunks
            context = [*context, (piece, codes)][-keep:] if keep else []
            report(i, res.num_frames, max_frames, audio_seconds, finished=True)
            if res.stop_reason == "max_frames":
                where = f"chunk {i + 1}/{len(pieces)} ({_opening(piece)})"
                if max_frames < own:
                    left = len(pieces) - i - 1
                    warn(
                        f"--max-seconds {settings.max_seconds:g} reached in {where}: it is cut "
                        f"short" + (f" and {left} more chunk(s) left unspoken" if left else "")
                    )
                    break
                warn(
                    f"{where} reached its budget of {own / self.frame_rate:.1f} s before the "
                    "model ended it; it may be cut short"
                )
        host = [c for *_, c in done] or [np.zeros((self.num_codebooks, 0), np.int32)]
        codes = np.concatenate(host, axis=1)
        if codes.shape[1] == 0:  # the same answer whether it streams or not
            raise NoAudio(
                "no audio was made: the model ended the speech before its first whole frame "
                "(try another seed or a longer text)"
            )
        if decoder:
            tail = np.array(decoder.flush(), dtype=np.float32)
            if tail.size:
                sent.append(tail)
                emit(tail)
            samples = np.concatenate(sent) if sent else np.zeros(0, np.float32)
        else:
            # the device's own copies of the codes, not the host's
            whole = mx.concatenate([res.codes for _, _, res, _ in done], axis=1)
            samples = np.array(self.codec.decode(whole), dtype=np.float32)
        return Speech(
            samples=samples,
            sample_rate=self.sample_rate,
            codes=codes,
            chunks=[piece for piece, *_ in done],
            stop_reasons=[res.stop_reason for _, _, res, _ in done],
            prompt_tokens=sum(len(p.input_ids) for _, p, *_ in done),
            cached_tokens=sum(res.cached_tokens for _, _, res, _ in done),
            frames=sum(res.num_frames for _, _, res, _ in done),
            seconds=time.perf_counter() - start,
            warnings=warnings,
        )


def _opening(text: str, words: int = 5) -> str:
    head = text.split()
    return '"' + " ".join(head[:words]) + ("…" if len(head) > words else "") + '"'
