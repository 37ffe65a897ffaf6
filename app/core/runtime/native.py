"""llama.cpp's C API, wrapped just enough for the engine host: models, contexts, batches, sampler chains, the
vocabulary, and the quantizer.

Only the runtime package imports ``llama_cpp`` (a test enforces it), and only the engine host's worker thread
calls into a loaded model. Every per-token call here is one ctypes call into llama.cpp; nothing copies logits
into Python on the decode path.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Sequence
from typing import Any

import llama_cpp

from app.core.errors import NOT_UNICODE, DeskError, PromptFormatError
from app.core.prompts import Message
from app.core.runtime.types import KV_CACHE_TYPES, SamplingSettings, TokenLogprobs, TokenProb

_backend_lock = threading.Lock()
_backend_ready = False
PENALTY_LAST_N = 64  # tokens the repeat penalty looks back over (llama.cpp's default)


def init_backend() -> None:
    """Initialise llama.cpp's backends once per process."""
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            _backend_ready = True


class LoadAborted(Exception):
    """The load was cancelled through its progress callback."""


class NativeModel:
    """A llama.cpp model (weights) and its vocabulary. Free it with :meth:`close`. With ``no_alloc`` llama.cpp
    only validates the file and lays out its tensors (no weights are read): no context can be made on it."""

    def __init__(
        self,
        path: str,
        *,
        n_gpu_layers: int,
        vocab_only: bool = False,
        no_alloc: bool = False,
        should_abort: Callable[[], bool] | None = None,
        on_progress: Callable[[float], None] | None = None,
        devices: Sequence[int] = (),
        layer_split: Sequence[int] = (),
        buffer_overrides: Sequence[tuple[str, int]] = (),
        mmap: bool = True,
    ) -> None:
        init_backend()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        if devices:  # the offload devices, in order (else llama.cpp takes every local GPU)
            device_list = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
            params.devices = ctypes.cast(device_list, ctypes.c_void_p)
        if layer_split:  # offloaded layers per device, in the order of ``devices``
            split = (ctypes.c_float * max(int(llama_cpp.llama_max_devices()), len(layer_split)))(*layer_split)
            params.tensor_split = split
        self._overrides: ctypes.Array[_BufferOverride] | None = None
        if buffer_overrides:  # (tensor name regex, ggml buffer type): where matching weights are kept
            self._overrides = _buffer_overrides(buffer_overrides)  # llama.cpp reads it for the model's lifetime
            params.tensor_buft_overrides = ctypes.cast(self._overrides, ctypes.c_void_p)
        params.vocab_only = vocab_only
        if not mmap:  # read the weights into buffers of their exact size (a mapped buffer spans a file range)
            params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
        if no_alloc:  # read the header and tensor table, check them, allocate and read nothing
            params.no_alloc = True
            params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE  # the mmap path cannot skip allocation
        aborted = [False]

        def progress(fraction: float, user_data: Any) -> bool:
            if on_progress is not None:
                on_progress(float(fraction))
            if should_abort is not None and should_abort():
                aborted[0] = True
                return False
            return True

        callback = llama_cpp.llama_progress_callback(progress)
        params.progress_callback = callback
        self.ptr = llama_cpp.llama_model_load_from_file(path.encode("utf-8"), params)
        if not self.ptr:
            if aborted[0]:
                raise LoadAborted
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.metadata = self._read_metadata()
        self.vocab = NativeVocab(llama_cpp.llama_model_get_vocab(self.ptr), self.metadata)
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self.ptr))
        self.n_layer = int(llama_cpp.llama_model_n_layer(self.ptr))

    def _read_metadata(self) -> dict[str, str]:
        metadata: dict[str, str] = {}
        size = 1024
        buffer = ctypes.create_string_buffer(size)
        for index in range(int(llama_cpp.llama_model_meta_count(self.ptr))):
            values = []
            for reader in (llama_cpp.llama_model_meta_key_by_index, llama_cpp.llama_model_meta_val_str_by_index):
                needed = int(reader(self.ptr, index, buffer, size))
                if needed >= size:
                    bigger = ctypes.create_string_buffer(needed + 1)
                    reader(self.ptr, index, bigger, needed + 1)
                    values.append(bigger.value.decode("utf-8", errors="replace"))
                else:
                    values.append(buffer.value.decode("utf-8", errors="replace"))
            metadata[values[0]] = values[1]
        return metadata

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None


class _BufferOverride(ctypes.Structure):
    _fields_ = (("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p))  # llama_model_tensor_buft_override


def _buffer_overrides(overrides: Sequence[tuple[str, int]]) -> ctypes.Array[_BufferOverride]:
    """llama.cpp's override array: one entry per (pattern, buffer type), ended by an empty entry."""
    entries = (_BufferOverride * (len(overrides) + 1))()
    for entry, (pattern, buffer_type) in zip(entries, overrides, strict=False):
        entry.pattern, entry.buft = pattern.encode("utf-8"), buffer_type
    return entries


class NativeContext:
    """A llama.cpp context (KV cache and compute buffers) over a model."""

    def __init__(
        self,
        model: NativeModel,
        *,
        n_ctx: int,
        n_batch: int,
        n_seq_max: int = 1,
        flash_attn: bool = True,
        kv_type: str = "f16",
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        cb_eval: Any = None,
    ) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = max(n_batch, n_seq_max)  # a decode step holds one token of every sequence
        params.n_ubatch = min(n_batch, 512)
        params.n_seq_max = n_seq_max
        # one KV stream per sequence: a sequence's attention never depends on where others' cells lie, so a
        # greedy reply is identical alone or beside others (llama.cpp notes it is also faster without a shared
        # prefix); each sequence gets n_ctx / n_seq_max cells
        params.kv_unified = False
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.type_k = params.type_v = KV_CACHE_TYPES[kv_type]
        params.no_perf = True
        if n_threads:
            params.n_threads = n_threads
        if n_threads_batch or n_threads:
            params.n_threads_batch = n_threads_batch or n_threads
        if cb_eval is not None:
            params.cb_eval = cb_eval
            params.cb_eval_user_data = None
        self._cb_eval = cb_eval  # keep the callback alive as long as the context
        self.ptr = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise RuntimeError("llama.cpp could not create a context")
        self.memory = llama_cpp.llama_get_memory(self.ptr)
        self.n_ctx = int(llama_cpp.llama_n_ctx(self.ptr))
        self.n_batch = int(llama_cpp.llama_n_batch(self.ptr))
        self.n_seq_max = n_seq_max
        self.n_threads = int(llama_cpp.llama_n_threads(self.ptr))

    def decode(self, batch: Batch) -> int:
        """llama_decode: 0 = done, 1 = no room in the KV cache, 2 = aborted, < 0 = error."""
        return int(llama_cpp.llama_decode(self.ptr, batch.struct))

    def forget(self, sequence: int, start: int = 0) -> None:
        """Drop a sequence's KV cells from position ``start`` on."""
        llama_cpp.llama_memory_seq_rm(self.memory, sequence, start, -1)

    def move_sequence(self, source: int, target: int) -> None:
        """Move ``source``'s KV cells to sequence ``target`` (replacing what it held). With one KV stream per
        sequence llama.cpp copies the whole stream at the next decode."""
        self.copy_sequence(source, target)
        llama_cpp.llama_memory_seq_rm(self.memory, source, -1, -1)

    def save_sequence(self, sequence: int) -> bytearray:
        """llama.cpp's state of ``sequence``'s KV cells (empty when it holds none or cannot be saved)."""
        size = int(llama_cpp.llama_state_seq_get_size(self.ptr, sequence))
        if size <= 0:
            return bytearray()
        state = bytearray(size)
        written = int(llama_cpp.llama_state_seq_get_data(self.ptr, _byte_array(state), size, sequence))
        del state[written:]
        return state

    def restore_sequence(self, sequence: int, state: bytearray) -> bool:
        """Replace ``sequence``'s KV cells with a state from :meth:`save_sequence`; False when llama.cpp
        refused it (no room for the cells): the sequence then holds nothing."""
        read = int(llama_cpp.llama_state_seq_set_data(self.ptr, _byte_array(state), len(state), sequence))
        return read == len(state)

    def copy_sequence(self, source: int, target: int) -> None:
        """Give ``target`` a copy of ``source``'s KV cells (replacing what it held; ``source`` keeps its own).
        With one KV stream per sequence llama.cpp copies the whole stream at the next decode."""
        llama_cpp.llama_memory_seq_rm(self.memory, target, -1, -1)
        llama_cpp.llama_memory_seq_cp(self.memory, source, target, -1, -1)

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self.memory, True)

    def logits_row(self, row: int, n_vocab: int) -> Any:
        """The logits of output row ``row`` as a numpy view (valid until the next decode)."""
        import numpy as np

        pointer = llama_cpp.llama_get_logits_ith(self.ptr, row)
        return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))

    def logprobs(self, row: int, vocab: NativeVocab, token: int, top: int) -> TokenLogprobs:
        """``token``'s log-probability at output row ``row`` and the ``top`` likeliest tokens (log-softmax of
        the raw logits, computed in numpy: nothing per vocabulary entry runs in Python)."""
        import numpy as np

        logits = self.logits_row(row, vocab.size)
        peak = float(logits.max())
        log_total = peak + float(np.log(np.exp(logits - peak).sum()))

        def prob(token_id: int) -> TokenProb:
            return TokenProb(token_id, vocab.token_bytes(token_id), float(logits[token_id]) - log_total)

        best: tuple[TokenProb, ...] = ()
        if top > 0:
            ids = np.argpartition(-logits, top)[:top] if top < vocab.size else np.arange(vocab.size)
            best = tuple(prob(int(i)) for i in sorted(ids, key=lambda i: -logits[i]))
        return TokenLogprobs(prob(token), best)

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_free(self.ptr)
            self.ptr = None


def _byte_array(data: bytearray) -> Any:
    """``data`` as a ctypes ``uint8_t *`` argument, without a copy."""
    return (ctypes.c_uint8 * len(data)).from_buffer(data)


class Batch:
    """A llama_batch with room for ``capacity`` tokens, filled row by row."""

    def __init__(self, capacity: int, n_seq_max: int = 1) -> None:
        self.capacity = capacity
        self.struct = llama_cpp.llama_batch_init(capacity, 0, n_seq_max)
        self.token = self.struct.token
        self.pos = self.struct.pos
        self.n_seq_id = self.struct.n_seq_id
        self.seq_id = self.struct.seq_id
        self.logits = self.struct.logits
        self.size = 0

    def clear(self) -> None:
        self.size = 0

    def add(self, token: int, position: int, sequence: int, want_logits: bool) -> int:
        """Append one token; returns its row (the index for sampling when ``want_logits``)."""
        row = self.size
        self.token[row] = token
        self.pos[row] = position
        self.n_seq_id[row] = 1
        self.seq_id[row][0] = sequence
        self.logits[row] = want_logits
        self.size = row + 1
        self.struct.n_tokens = self.size
        return row

    def close(self) -> None:
        if self.struct is not None:
            llama_cpp.llama_batch_free(self.struct)
            self.struct = None


class SamplerChain:
    """llama.cpp's sampler chain for one sequence: a grammar, logit biases, repeat / frequency / presence penalties, top-k,
    top-p, min-p, temperature and a seeded draw; greedy at temperature 0. Sampling also records the token for
    the penalties."""

    def __init__(self, sampling: SamplingSettings, n_vocab: int, seed: int, vocab: NativeVocab | None = None) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if sampling.grammar:  # first: what the grammar forbids is gone before anything else looks
            if vocab is None:
                raise DeskError("A grammar needs the model's vocabulary.")
            if sampling.grammar_triggers:  # free text until a trigger token; from it on, the grammar holds
                triggers = (llama_cpp.llama_token * len(sampling.grammar_triggers))(*sampling.grammar_triggers)
                grammar = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                    vocab.ptr, sampling.grammar.encode(), b"root", None, 0, triggers, len(triggers)
                )
            else:
                grammar = llama_cpp.llama_sampler_init_grammar(vocab.ptr, sampling.grammar.encode(), b"root")
            if not grammar:
                llama_cpp.llama_sampler_free(chain)
                raise DeskError("The reply's grammar (from a JSON schema or tools) could not be read by llama.cpp.")
            add(chain, grammar)
        if sampling.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(sampling.logit_bias))()
            for slot, (token, bias) in zip(biases, sampling.logit_bias, strict=True):
                slot.token, slot.bias = token, bias
            add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(sampling.logit_bias), biases))
        self._penalties = None  # the chain owns it; the prompt is shown to it alone (not to a grammar)
        if (sampling.repeat_penalty, sampling.frequency_penalty, sampling.presence_penalty) != (1, 0, 0):
            self._penalties = llama_cpp.llama_sampler_init_penalties(
                n_vocab,
                PENALTY_LAST_N,
                sampling.repeat_penalty,
                sampling.frequency_penalty,
                sampling.presence_penalty,
            )
            add(chain, self._penalties)
        if sampling.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if sampling.top_k > 0:
                add(chain, llama_cpp.llama_sampler_init_top_k(sampling.top_k))
            add(chain, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
            add(chain, llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(sampling.temperature))
            add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        self.ptr = chain

    def accept(self, tokens: Sequence[int]) -> None:
        """Let the penalties see ``tokens`` (the prompt) as already written."""
        if self._penalties is not None:
            for token in tokens[-PENALTY_LAST_N:]:
                llama_cpp.llama_sampler_accept(self._penalties, token)

    def sample(self, context: NativeContext, row: int) -> int:
        return int(llama_cpp.llama_sampler_sample(self.ptr, context.ptr, row))

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None


class NativeVocab:
    """The :class:`app.core.prompts.Vocabulary` of a loaded model, plus fast per-token text for streaming."""

    def __init__(self, ptr: Any, metadata: dict[str, str]) -> None:
        self._ptr = ptr
        self.ptr = ptr  # for llama.cpp calls that take the vocabulary (grammars)
        self.size: int = int(llama_cpp.llama_vocab_n_tokens(ptr))
        self.bos_id: int = int(llama_cpp.llama_vocab_bos(ptr))
        self.eos_id: int = int(llama_cpp.llama_vocab_eos(ptr))
        self.add_bos: bool = bool(llama_cpp.llama_vocab_get_add_bos(ptr))
        self._template: str | None = metadata.get("tokenizer.chat_template")
        self._formatter: Any = None  # the template compiled, on first use
        self._pieces: dict[str, int] | None = None
        self._bytes: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._buffer = ctypes.create_string_buffer(256)

    def encode(self, text: str, *, special: bool) -> list[int]:
        """Token ids of ``text`` without BOS; ``special`` lets control-token text become control tokens."""
        if not text:
            return []
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise PromptFormatError(NOT_UNICODE) from err
        capacity = len(data) + 8
        out = (llama_cpp.llama_token * capacity)()
        count = int(llama_cpp.llama_tokenize(self._ptr, data, len(data), out, capacity, False, special))
        if count < 0:
            capacity = -count
            out = (llama_cpp.llama_token * capacity)()
            count = int(llama_cpp.llama_tokenize(self._ptr, data, len(data), out, capacity, False, special))
        return list(out[:count])

    def decode(self, tokens: Sequence[int], *, special: bool = True) -> str:
        """Text of ``tokens``; with ``special`` control tokens such as ``<s>`` are shown too.

        Raises:
            DeskError: an id that is not one of the model's tokens (llama.cpp would abort the process).
        """
        if not tokens:
            return ""
        strays = [t for t in tokens if not 0 <= t < self.size]
        if strays:
            raise DeskError(f"Token {strays[0]} is not one of this model's tokens (0-{self.size - 1}).")
        array = (llama_cpp.llama_token * len(tokens))(*tokens)
        capacity = len(tokens) * 16 + 16
        buffer = ctypes.create_string_buffer(capacity)
        count = int(llama_cpp.llama_detokenize(self._ptr, array, len(tokens), buffer, capacity, False, special))
        if count < 0:
            capacity = -count + 1
            buffer = ctypes.create_string_buffer(capacity)
            count = int(llama_cpp.llama_detokenize(self._ptr, array, len(tokens), buffer, capacity, False, special))
        return buffer.raw[:count].decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes of one token's text (may be part of a UTF-8 character); control tokens give b""."""
        cached = self._bytes.get(token)
        if cached is None:
            if not 0 <= token < self.size:
                raise DeskError(f"Token {token} is not one of this model's tokens (0-{self.size - 1}).")
            count = int(llama_cpp.llama_token_to_piece(self._ptr, token, self._buffer, 256, 0, False))
            cached = self._buffer.raw[: max(count, 0)]
            self._bytes[token] = cached
        return cached

    def is_end_of_generation(self, token: int) -> bool:
        known = self._eog.get(token)
        if known is None:
            known = bool(llama_cpp.llama_vocab_is_eog(self._ptr, token))
            self._eog[token] = known
        return known

    def piece_id(self, piece: str) -> int | None:
        """The id of the token whose text is exactly ``piece``, or None."""
        if self._pieces is None:
            pieces: dict[str, int] = {}
            for token_id in range(self.size):
                text = llama_cpp.llama_vocab_get_text(self._ptr, token_id).decode("utf-8", errors="replace")
                pieces.setdefault(text, token_id)
            self._pieces = pieces
        return self._pieces.get(piece)

    def render_template(self, messages: Sequence[Message]) -> str | None:
        """The model's own chat template applied to ``messages`` with a generation prompt, or None."""
        if not self._template:
            return None
        if self._formatter is None:  # compiling the template takes milliseconds: once per model, not per reply
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            bos = self.decode([self.bos_id]) if self.bos_id >= 0 else ""
            eos = self.decode([self.eos_id]) if self.eos_id >= 0 else ""
            self._formatter = Jinja2ChatFormatter(
                self._template, eos_token=eos, bos_token=bos, add_generation_prompt=True
            )
        result = self._formatter(messages=[m.to_json() for m in messages])
        return str(result.prompt)


def quantize(
    src: str, dst: str, ftype: int, *, threads: int = 0, allow_requantize: bool = True, dry_run: bool = False
) -> int:
    """llama.cpp's quantizer from ``src`` to ``dst``; returns its status (0 = done). ``dry_run`` reads no
    tensor data and writes nothing: llama.cpp only logs each tensor's chosen type and the sizes."""
    init_backend()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = allow_requantize
    params.dry_run = dry_run
    return int(llama_cpp.llama_model_quantize(src.encode("utf-8"), dst.encode("utf-8"), params))
