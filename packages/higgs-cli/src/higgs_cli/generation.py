"""A prompt's frames on the batch: the prompt a text and its speakers make, and
the job step that waits on the prompt's stream, its constant beginning taken from
(or kept in) the prefix store."""

from collections.abc import Callable
from pathlib import Path

import numpy as np

from higgs_cli.prefixes import PrefixStore, prefix_key
from higgs_cli.prompt import Prompt, conversation, encode_prompt
from higgs_cli.runner import Work
from higgs_cli.settings import HiggsError
from higgs_core import Batch, Finished, Frames, LogitsProcessor, PrefixReady, Status

# Voice prefixes shorter than this are not worth keeping.
MIN_PREFIX = 16

Warn = Callable[[str], None]


def quiet(_: str):
    pass


class Generation:
    """Prompts and their frames for one model and tokenizer.

    ``identity``: the model's part of a prefix key (see
    :func:`higgs_cli.prefixes.model_identity`). ``processors``: makes each
    stream's logits processor (or None), the seam tests steer generation with.
    """

    def __init__(
        self,
        model,
        tokenizer,
        store: PrefixStore,
        identity: Callable[[], str],
        processors: Callable[[], LogitsProcessor | None],
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.store = store
        self.identity = identity
        self.processors = processors

    def prompt(self, text, speakers, context, settings, tags=None) -> Prompt:
        cfg = self.model.config
        messages = conversation(
            text,
            speakers,
            scene=settings.scene,
            context=context,
            refs_in_system=settings.ref_in_system,
            tags=tags,
        )
        refs_in = settings.ref_in_system and any(s.cloned for s in speakers)
        if refs_in and not cfg.encode_audio_in_tokens:
            raise HiggsError(
                "this model does not read audio in its system turn "
                "(encode_audio_in_tokens is off in its config); clone without --ref-in-system"
            )
        return encode_prompt(
            self.tokenizer,
            messages,
            audio_out_id=cfg.audio_out_token_id,
            audio_in_id=cfg.audio_in_token_id,
            stream_bos=cfg.audio_stream_bos_id,
            stream_eos=cfg.audio_stream_eos_id,
            # The system and reference turns: all but the context turns and the text.
            prefix_messages=len(messages) - 2 * len(context) - 1,
        )

    def frames(
        self,
        batch: Batch,
        prompt: Prompt,
        settings,
        seed,
        max_frames,
        on_frames=None,
        *,
        folder: Path | None = None,
        warn: Warn = quiet,
    ) -> Work:
        """Generate one prompt's frames in ``batch``, waiting on it; hands each
        step's new frames to ``on_frames(frames, count, last)`` (``last``: the
        index of the stream's last frame as far as it is known); returns the result.

        The prompt's constant beginning comes from the prefix store (memory, then
        ``folder`` on disk) when it is there, and is kept there when it is not.
        """
        ids = np.array(prompt.input_ids, dtype=np.int32)
        audio = prompt.audio_ids if len(prompt.audio_ids) else None
        key, prefix, keep = "", None, 0
        if prompt.prefix_tokens >= MIN_PREFIX:
            P = prompt.prefix_tokens
            n_audio = int(self.model.audio_mask(ids[:P]).sum())
            prefix_audio = audio[:n_audio] if audio is not None and n_audio else None
            key = prefix_key(self.identity(), ids[:P], prefix_audio)
            prefix = self.store.get(key, folder, prefix_audio, warn)
            keep = 0 if prefix is not None else P
        ticket = batch.submit(
            ids,
            audio,
            history=prompt.history,  # audio out only, as the release's RAS window
            params=settings.sampling,
            max_frames=max_frames,
            seed=seed,
            prefix=prefix,
            keep_prefix=keep,
            logits_processor=self.processors(),
        )
        try:
            while True:
                for event in (yield ticket):
                    if isinstance(event, PrefixReady):
                        self.store.keep(key, event.prefix, folder, warn)
                    elif isinstance(event, Frames):
                        if on_frames:
                            on_frames(event.frames, event.count, event.last)
                    elif isinstance(event, Finished):
                        return event.result
        finally:
            if ticket.status is not Status.FINISHED:
                ticket.cancel()
