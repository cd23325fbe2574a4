"""From a spec to a validated model on disk, downloading it when allowed."""

from __future__ import annotations

from pathlib import Path

from .download import download_blocker, download_model
from .locations import default_model_dir, find_on_disk, hf_cache_dir, registry_path
from .names import ModelCorrupt, ModelNotFound, ModelSpec, ProgressFn, ResolvedModel, spec_for
from .quantize import local_quant_plan, make_local_quant
from .validation import validate_model_file


def resolve_model(
    model: ModelSpec | str,
    model_dir: Path | None = None,
    *,
    allow_download: bool = True,
    progress: ProgressFn | None = None,
) -> ResolvedModel:
    """Find the model on disk, downloading it when allowed, and validate it.

    `model` is the spec parsed where the name came in; a name (as tests and scripts
    pass) is parsed here, once.
    """
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    spec = spec_for(model, model_dir)
    if spec.local_path is not None:
        validate_model_file(spec.local_path, spec.kind)
        return ResolvedModel(spec, spec.local_path, spec.kind)
    plan = local_quant_plan(spec)
    if plan is not None:
        return _local_quant(spec, *plan, model_dir, allow_download, progress)
    on_disk = find_on_disk(spec, model_dir)
    if on_disk is not None:
        validate_model_file(on_disk, spec.kind)
        return ResolvedModel(spec, on_disk, spec.kind)
    blocker = download_blocker(allow_download)
    if blocker is not None:
        raise ModelNotFound(_missing_message(spec, model_dir, blocker))
    path = download_model(spec, model_dir, progress)
    return ResolvedModel(spec, path, spec.kind)


def _local_quant(
    spec: ModelSpec,
    quant: str,
    source: ModelSpec,
    model_dir: Path,
    allow_download: bool,
    progress: ProgressFn | None,
) -> ResolvedModel:
    """A quantization made on this machine: on disk already, else made from the F16 file,
    which is downloaded first if need be (and may be deleted once the file is made)."""
    target = registry_path(spec, model_dir)
    if target.is_file():
        try:
            validate_model_file(target, spec.kind)
            return ResolvedModel(spec, target, spec.kind)
        except ModelCorrupt:
            pass  # made again below, from the F16 file
    try:
        made_from = resolve_model(
            source, model_dir, allow_download=allow_download, progress=progress
        )
    except ModelNotFound as exc:
        raise ModelNotFound(
            f"{spec.display_name} is made on this machine from {source.display_name}, once: {exc}"
        ) from exc
    path = make_local_quant(made_from.path, target, quant, progress)
    return ResolvedModel(spec, path, spec.kind)


def _missing_message(spec: ModelSpec, model_dir: Path, blocker: tuple[str, str]) -> str:
    assert spec.entry is not None
    reason, remedy = blocker
    target = registry_path(spec, model_dir)
    what = spec.filename or "the transformers files (config.json, model.safetensors, tokenizer)"
    places = [str(target)]
    cache = hf_cache_dir()
    if cache:
        places.append(f"the Hugging Face cache {cache}")
    return (
        f"Model {spec.display_name} is not on disk and {reason}. "
        f"Looked in: {'; '.join(places)}. "
        f"Put {what} from {spec.entry.repo_id} at {target}, or {remedy} and try again."
    )
