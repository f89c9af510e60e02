"""Image (and text) embedders for the hard cosine filter (METHOD.md §6) and sample-based context (§3).

One protocol: ``preprocess`` turns an RGB ``PIL`` image into a tensor, ``embed_images`` turns a batch of those
into L2-normalised rows, ``embed_texts`` does the same for strings where the model has a text tower. Embedders
are named by a spec string:

- ``tiny``: a real open_clip ``CLIP`` at tiny size, random weights (seeded), built in-process: offline tests;
- ``open_clip:<model>[:<pretrained>]``: e.g. ``open_clip:ViT-B-32:openai`` (the paper's, the default);
  ``open_clip:ViT-B-32`` alone gives random weights (speed benchmarks);
- ``hf:<hub id or folder>``: a Hugging Face transformers ``CLIPModel`` (e.g. ``hf:openai/clip-vit-base-patch32``);
- ``resnet20:<path>``: the CIFAR-10 ResNet-20 of ``../shared/models`` (its 64-d pooled features; no text tower),
  or the ``RUN/model.pt`` of a ``diffcoremix train --model resnet20`` run (a ResNet-20 that knows your classes),
  shown images through the run's own evaluation transform;
- ``resnet56:<path>``, ``cifar-resnet:<path>``: the ResNet-56, or a CIFAR ResNet of any depth 6n + 2 (read
  from the checkpoint); the id ``resnet<depth>:<digest>`` names the weights whatever the spec.

``id`` names the model and its weights; the on-disk cache keys embeddings by it. Local weights are named by their
content (:func:`~diffcoremix.identities.weights_sha256`), never their path: ``hf-clip:<digest>``,
``open_clip:<model>:<digest>``, ``resnet<depth>:<digest>`` (16 hex digits), so that changed weights never reuse an
embedding cached for the old ones, and one folder reached by two paths is one embedder. Hub weights are named by
their id and the commit of their cached snapshot (``hf-clip:<hub id>@<commit>``), open_clip's tags by their name.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from diffcoremix import hub
from diffcoremix.checkpoints import unsafe_refusal
from diffcoremix.errors import DiffCoReMixError, ModelLoadError
from diffcoremix.identities import weights_sha256
from diffcoremix.registry import Registry


class EmbedderLoadError(DiffCoReMixError):
    """The embedder's weights cannot be had (offline, missing file).

    Args:
        message: what could not be loaded, and why.
        local: specs that load the same model from local weights, offered as alternatives with ``tiny``.
        option: the command-line option that named the embedder, spelled in the offered alternatives.
    """

    def __init__(self, message: str, local: Sequence[str] = (), option: str = "--embedder") -> None:
        self.message = message
        self.local = tuple(local)
        self.option = option
        if self.local:
            alternatives = " or ".join(f"{option} {spec}" for spec in self.local)
            message += f". Without network access, use {option} tiny (built in, random weights) or local weights: "
            message += alternatives
        super().__init__(message)

    def for_option(self, option: str) -> EmbedderLoadError:
        """The same error, its alternatives spelled for ``option`` (``--context-embedder``)."""
        return EmbedderLoadError(self.message, self.local, option)


class Embedder(Protocol):
    """Maps images (and, where possible, texts) to L2-normalised vectors."""

    id: str
    """Names the model and its weights (cache key)."""
    has_text: bool

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """An RGB image -> a ``(C, H, W)`` float tensor ready for :meth:`embed_images`."""
        ...

    def embed_images(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, D)`` float32, unit L2 norm, on the CPU."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> ``(N, D)`` float32, unit L2 norm; raises for embedders without a text tower."""
        ...


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu()


class ModuleEmbedder:
    """Any torch module used as a feature extractor, with its own transform (no text tower)."""

    has_text = False

    def __init__(self, module: torch.nn.Module, transform: Callable[[Image.Image], torch.Tensor], id: str,
                 device: str = "cpu") -> None:  # fmt: skip
        self.module: Any = module.eval().to(device)
        self.transform = transform
        self.id = id
        self.device = device

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    @torch.inference_mode()
    def embed_images(self, batch: torch.Tensor) -> torch.Tensor:
        return _normalise(self.module(batch.to(self.device)).flatten(1))

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        raise DiffCoReMixError(f"embedder {self.id} has no text tower: the text check and --context sample need a "
                               "CLIP embedder")  # fmt: skip


class OpenClipEmbedder(ModuleEmbedder):
    """An open_clip ``CLIP`` model with its evaluation transform and tokenizer."""

    has_text = True

    def __init__(self, model: Any, transform: Callable[[Image.Image], torch.Tensor], tokenizer: Any, id: str,
                 device: str = "cpu") -> None:  # fmt: skip
        super().__init__(model, transform, id, device)
        self.tokenizer = tokenizer

    @torch.inference_mode()
    def embed_images(self, batch: torch.Tensor) -> torch.Tensor:
        return _normalise(self.module.encode_image(batch.to(self.device)))

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return _normalise(self.module.encode_text(self.tokenizer(list(texts)).to(self.device)))


def tiny_open_clip(seed: int = 0, device: str = "cpu") -> OpenClipEmbedder:
    """A real open_clip ``CLIP`` (ViT image tower, transformer text tower) at tiny size with seeded weights."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    from diffcoremix.seeds import seeded_init

    with seeded_init(seed):
        model = open_clip.CLIP(
            embed_dim=32,
            vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=16, patch_size=8, image_size=64),
            text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=4, layers=2),
        )
    transform = open_clip.image_transform(64, is_train=False)
    return OpenClipEmbedder(model, transform, open_clip.tokenizer.SimpleTokenizer(), f"tiny-open-clip-seed{seed}",
                            device)  # fmt: skip


def open_clip_embedder(model_name: str, pretrained: str | None, device: str = "cpu") -> OpenClipEmbedder:
    """An open_clip model by name; ``pretrained`` None gives random weights (seeded, for benchmarks).

    ``pretrained`` is one of open_clip's tags (``openai``: weights from the hub, or its cache when the hub cannot
    be reached) or a weights file's path.

    Raises:
        EmbedderLoadError: the weights cannot be had; offline, at once when the tag's file is not cached.
    """
    import open_clip

    from diffcoremix.seeds import seeded_init

    tag = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    offline = bool(tag) and hub.hub_offline()
    try:
        if offline and _open_clip_cached_weights(tag) is None:
            raise FileNotFoundError(f"{hub.offline_reason()}, and the weights are not in the cache {hub.cache_dir()}")
        # Offline, a cached file is read without asking the hub first (open_clip takes no local_files_only).
        with seeded_init(0), hub.cache_only() if offline else contextlib.nullcontext():
            model, _, transform = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as err:
        if (refusal := unsafe_refusal(err, pretrained or model_name, "the open_clip weights")) is not None:
            raise refusal from None  # open_clip reads a .bin with weights_only=True
        reason = " ".join(str(err).split())[:300]
        if tag.get("hf_hub") and not offline:  # open_clip's words do not say that a proxy answered for the hub
            reason = hub.not_a_hub_reason(tag["hf_hub"].rsplit("/", 1)[0]) or reason
        raise EmbedderLoadError(
            f"cannot load open_clip model {model_name!r} with weights {pretrained!r} ({reason})",
            local=[f"open_clip:{model_name}:/path/to/open_clip_pytorch_model.bin", "hf:/path/to/clip-folder"],
        ) from err
    tokenizer = open_clip.get_tokenizer(model_name)
    # A tag names fixed weights; a file (what open_clip reads when the name is no tag) is named by its content.
    weights = pretrained if tag or not pretrained else weights_sha256(pretrained)[:16]
    return OpenClipEmbedder(model, transform, tokenizer, f"open_clip:{model_name}:{weights or 'random-seed0'}",
                            device)  # fmt: skip


def _open_clip_cached_weights(tag: dict[str, Any]) -> str | None:
    """The local file that open_clip would read for a pretrained tag's config, if it is cached (else None)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if tag.get("file"):
        return str(tag["file"])
    if tag.get("hf_hub"):  # "org/repo/filename", or "org/repo/" for the default file
        repo_id, filename = tag["hf_hub"].rsplit("/", 1)
        filename = filename or HF_WEIGHTS_NAME
        safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else f"{Path(filename).stem}.safetensors"
        return hub.cached_file(repo_id, [safe, filename])
    if tag.get("url"):  # open_clip's own download folder
        path = Path("~/.cache/clip").expanduser() / Path(tag["url"]).name
        return str(path) if path.is_file() else None
    return None


def cifar_resnet_transform() -> Callable[[Image.Image], torch.Tensor]:
    """What the shared CIFAR ResNets read: the image resized to 32 x 32, in [0, 1], normalised."""
    from torchvision.transforms import v2

    from diffcoremix.embedders.resnet20 import CIFAR_MEAN, CIFAR_STD

    transform: Callable[[Image.Image], torch.Tensor] = v2.Compose([
        v2.Resize((32, 32), antialias=True),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=CIFAR_MEAN, std=CIFAR_STD),
    ])  # fmt: skip
    return transform


def cifar_resnet_id(path: str | Path, depth: int) -> str:
    """``resnet<depth>:<16 hex digits of the checkpoint's SHA-256>``: names the network and its weights, whatever
    spec loaded them (``resnet20:``, ``cifar-resnet:``), so the filter's and the judge's ids can be compared."""
    return f"resnet{depth}:{weights_sha256(path)[:16]}"


def cifar_resnet_embedder(path: str | Path, device: str = "cpu", depth: int | None = None) -> ModuleEmbedder:
    """A CIFAR ResNet checkpoint's 64-d pooled features (images resized to 32 x 32); ``depth`` None takes any.

    Raises:
        EmbedderLoadError: the checkpoint does not exist. ModelLoadError: it is not a CIFAR ResNet of ``depth``
            (nor a train run's model.pt of one).
    """
    from diffcoremix.data.transforms import for_run
    from diffcoremix.embedders.resnet20 import RUN_MODEL_NAME, load_cifar_resnet, trained_run_info

    path = Path(path)
    if not path.is_file():
        raise EmbedderLoadError(f"{_cifar_resnet_name(depth)} checkpoint {path} does not exist")
    run = trained_run_info(path)
    if run is not None and run["model"] != RUN_MODEL_NAME:
        raise ModelLoadError(f"{path} holds a train run's {run['model']}, not a CIFAR ResNet: the {_spec(depth)} "
                             f"embedder reads the model.pt of runs trained with --model {RUN_MODEL_NAME}")  # fmt: skip
    model = load_cifar_resnet(path, depth=depth)
    # A run's network is shown images as its evaluation showed them (its size, mean and std), a bare checkpoint
    # as CIFAR's were.
    transform = for_run(run) if run is not None else cifar_resnet_transform()
    return ModuleEmbedder(model.features, transform, cifar_resnet_id(path, model.depth), device)


def _spec(depth: int | None) -> str:
    return "cifar-resnet:" if depth is None else f"resnet{depth}:"


def _cifar_resnet_name(depth: int | None) -> str:
    return "CIFAR ResNet" if depth is None else f"ResNet-{depth}"


def resnet20_embedder(path: str | Path, device: str = "cpu") -> ModuleEmbedder:
    """The CIFAR-10 ResNet-20 checkpoint's 64-d pooled features (images resized to 32 x 32)."""
    return cifar_resnet_embedder(path, device, depth=20)


class HFClipEmbedder:
    """A Hugging Face transformers ``CLIPModel`` with its image processor and tokenizer (hub id or folder)."""

    has_text = True

    def __init__(self, name_or_path: str, device: str = "cpu") -> None:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        offline = not Path(name_or_path).expanduser().exists() and hub.hub_offline()
        try:  # offline: local_files_only, and the hub's offline mode for what ignores it (user-agent telemetry)
            with hub.cache_only() if offline else contextlib.nullcontext(), hub.quiet_loading():
                self.model = CLIPModel.from_pretrained(name_or_path, local_files_only=offline).eval().to(device)
                self.processor = CLIPImageProcessor.from_pretrained(name_or_path, local_files_only=offline)
                self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=offline)
        except (OSError, ValueError, pickle.UnpicklingError) as err:
            if (refusal := unsafe_refusal(err, name_or_path, "the transformers CLIP")) is not None:
                raise refusal from None  # transformers reads a .bin with weights_only=True
            reason = " ".join(str(err).split())[:300]
            if offline:  # transformers' own words do not say that the network is the cause
                reason = f"{hub.offline_reason()}, and its files are not all in the cache {hub.cache_dir()}"
            elif not Path(name_or_path).expanduser().exists():  # nor that a proxy answered in the hub's place
                reason = hub.not_a_hub_reason(name_or_path) or reason
            raise EmbedderLoadError(
                f"cannot load transformers CLIP {name_or_path!r} ({reason})",
                local=["hf:/path/to/folder (holding a saved CLIPModel, image processor and tokenizer)"],
            ) from err
        self.id = f"hf-clip:{_hf_identity(name_or_path)}"
        self.device = device

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        pixels: torch.Tensor = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        return pixels

    @torch.inference_mode()
    def embed_images(self, batch: torch.Tensor) -> torch.Tensor:
        return _normalise(_features(self.model.get_image_features(pixel_values=batch.to(self.device))))

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        return _normalise(_features(self.model.get_text_features(**tokens)))


def _hf_identity(name_or_path: str) -> str:
    """A local folder's weights digest (whatever path reaches it), or a hub id with its cached snapshot's commit."""
    if Path(name_or_path).expanduser().exists():
        return weights_sha256(name_or_path)[:16]
    config = hub.cached_file(name_or_path, ["config.json"])  # the snapshot just loaded: snapshots/<commit>/
    return f"{name_or_path}@{Path(config).parent.name}" if config else name_or_path


def _features(output: Any) -> torch.Tensor:
    # transformers 5 returns a model output with the projected embeddings as pooler_output; 4.x a tensor.
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output  # type: ignore[no-any-return]


EMBEDDERS: Registry[Callable[[str, str], Embedder]] = Registry("embedder")
"""Spec prefix -> ``factory(argument, device)``; the argument is the spec after the first ``:``."""


@EMBEDDERS.register("tiny")
def _tiny(argument: str, device: str) -> Embedder:
    return tiny_open_clip(int(argument or 0), device)


@EMBEDDERS.register("open_clip")
def _open_clip(argument: str, device: str) -> Embedder:
    name, _, pretrained = argument.partition(":")
    return open_clip_embedder(name or "ViT-B-32", pretrained or None, device)


@EMBEDDERS.register("hf")
def _hf(argument: str, device: str) -> Embedder:
    return HFClipEmbedder(argument or "openai/clip-vit-base-patch32", device)


@EMBEDDERS.register("resnet20")
def _resnet20(argument: str, device: str) -> Embedder:
    return resnet20_embedder(argument, device)


@EMBEDDERS.register("resnet56")
def _resnet56(argument: str, device: str) -> Embedder:
    return cifar_resnet_embedder(argument, device, depth=56)


@EMBEDDERS.register("cifar-resnet")
def _cifar_resnet(argument: str, device: str) -> Embedder:
    return cifar_resnet_embedder(argument, device)


def load_embedder(spec: str, device: str = "cpu", option: str = "--embedder") -> Embedder:
    """An embedder from its spec (``tiny``, ``open_clip:ViT-B-32:openai``, ``resnet20:PATH``, ``resnet56:PATH``).

    Args:
        spec: the embedder spec.
        device: where the model runs.
        option: the command-line option the spec came from, named in error messages (``--context-embedder``).

    Raises:
        UnknownNameError: unknown kind; EmbedderLoadError: weights cannot be loaded.
    """
    kind, _, argument = spec.partition(":")
    try:
        return EMBEDDERS.get(kind)(argument, device)
    except EmbedderLoadError as err:
        if err.option == option:
            raise
        raise err.for_option(option) from err.__cause__
