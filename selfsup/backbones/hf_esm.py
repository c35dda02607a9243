"""ESM-2 weights saved by HuggingFace (``EsmForMaskedLM``/``EsmModel``, a folder of
``config.json`` and ``model.safetensors``) as selfsup's token Transformer and MLM head.

ESM-2 and selfsup's Transformer are the same network: pre-LayerNorm blocks, rotary positions in
the GPT-NeoX layout, GELU feed-forward, a final LayerNorm, and RoBERTa's LM head (dense, GELU,
LayerNorm, a decoder tied to the embedding). What differs is spelling and bookkeeping:

* keys: HF's separate ``query``/``key``/``value`` become one fused ``qkv`` (in that order, each
  head-major, as ``TransformerBlock`` splits it);
* the alphabet: ESM's 33 tokens are ``<cls> <pad> <eos> <unk>``, the 25 letters
  ``LAGVSERTIDPKQNFYMHWCXBUZO``, then ``. - <null_1> <mask>``; selfsup's protein tokeniser has the
  same first 29 and its ``<mask>`` at 29, so the embedding (and decoder) rows are those 29 and
  ESM's ``<mask>``;
* ``layer_norm_eps`` (1e-12) and ESM's token dropout (``token_dropout``: masked embeddings zeroed,
  the others rescaled) become the Transformer's ``norm_eps``, ``token_dropout`` and ``mask_id``.

Nothing is downloaded: the folder is read from disk (``save_pretrained``'s layout). Reading needs
no ``transformers``; only the tests, which compare with HF's model, import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from selfsup.errors import ConfigError, DataError
from selfsup.tokenize.alphabets import PROTEIN_LETTERS

ESM_TOKENS = ["<cls>", "<pad>", "<eos>", "<unk>", *PROTEIN_LETTERS, ".", "-", "<null_1>", "<mask>"]
OUR_ROWS = list(range(4 + len(PROTEIN_LETTERS))) + [ESM_TOKENS.index("<mask>")]  # ours → ESM's


def read_esm_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json, the weights) of a HuggingFace ESM folder, checked to be ESM-2 as selfsup
    reads it; DataError/ConfigError naming what is missing or different."""
    config = read_esm_config(folder)
    return config, load_file(str(Path(folder).expanduser() / "model.safetensors"))


def read_esm_config(folder: str | Path) -> dict[str, Any]:
    """The checked ``config.json`` of a HuggingFace ESM folder (the weights are not read: a
    config's shape needs none of them)."""
    folder = Path(folder).expanduser()
    config_file, weights_file = folder / "config.json", folder / "model.safetensors"
    for needed in (config_file, weights_file):
        if not needed.is_file():
            raise DataError(f"hf:{folder}: no {needed.name} there. selfsup never downloads: save "
                            "the model there with save_pretrained (config.json and "
                            "model.safetensors), e.g. on a machine with network access")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "esm":
        raise ConfigError(f"hf:{folder} holds a {config.get('model_type')!r} model; selfsup reads "
                          "ESM-2 (model_type esm) folders")
    # (key, wanted, the value when config.json leaves it out: ESM's code fixes GELU)
    wrong = {key: config.get(key, default) for key, wanted, default in (
        ("position_embedding_type", "rotary", None), ("emb_layer_norm_before", False, None),
        ("vocab_size", len(ESM_TOKENS), None), ("hidden_act", "gelu", "gelu"))
        if config.get(key, default) != wanted}
    if wrong:
        raise ConfigError(f"hf:{folder} is not shaped like ESM-2 ({wrong}); selfsup's Transformer "
                          "reads ESM-2 checkpoints (rotary, no embedding LayerNorm, 33 tokens)")
    vocabulary = folder / "vocab.txt"
    if vocabulary.is_file() and vocabulary.read_text().split() != ESM_TOKENS:
        raise ConfigError(f"{vocabulary} is not ESM's alphabet; selfsup maps ESM's token order")
    return config


def esm_backbone_options(config: dict[str, Any]) -> dict[str, Any]:
    """The Transformer options of an ESM-2 ``config.json``."""
    return {"dim": config["hidden_size"], "depth": config["num_hidden_layers"],
            "num_heads": config["num_attention_heads"], "ffn_dim": config["intermediate_size"],
            "positions": "rotary", "max_positions": config.get("max_position_embeddings", 1026),
            "norm_eps": config.get("layer_norm_eps", 1e-12), "pool": "mean",
            "token_dropout": bool(config.get("token_dropout", False)),
            "rotary_base": float(config.get("rope_theta", 10000.0)),
            "mask_id": OUR_ROWS.index(ESM_TOKENS.index("<mask>"))}


def esm_encoder_state(config: dict[str, Any], weights: dict[str, torch.Tensor]
                      ) -> dict[str, torch.Tensor]:
    """The weights of selfsup's ``TransformerEncoder`` from ESM's (module docstring)."""
    prefix = "esm." if any(key.startswith("esm.") for key in weights) else ""
    rows = torch.tensor(OUR_ROWS)

    def w(key: str) -> torch.Tensor:
        # LayerNorms are saved as weight/bias, or gamma/beta (transformers 5's save_pretrained)
        for spelling in (key, key.replace("LayerNorm.weight", "LayerNorm.gamma")
                         .replace("LayerNorm.bias", "LayerNorm.beta")):
            if prefix + spelling in weights:
                return weights[prefix + spelling]
        raise DataError(f"the ESM weights lack {prefix + key}: not an ESM-2 checkpoint, or a "
                        "damaged one")

    state = {"token_embedding.weight": w("embeddings.word_embeddings.weight")[rows]}
    for i in range(config["num_hidden_layers"]):
        hf, ours = f"encoder.layer.{i}.", f"blocks.{i}."
        attention = hf + "attention."
        state.update({
            ours + "attn_norm.weight": w(attention + "LayerNorm.weight"),
            ours + "attn_norm.bias": w(attention + "LayerNorm.bias"),
            ours + "qkv.weight": torch.cat([w(f"{attention}self.{p}.weight")
                                            for p in ("query", "key", "value")]),
            ours + "qkv.bias": torch.cat([w(f"{attention}self.{p}.bias")
                                          for p in ("query", "key", "value")]),
            ours + "attn_out.weight": w(attention + "output.dense.weight"),
            ours + "attn_out.bias": w(attention + "output.dense.bias"),
            ours + "ffn_norm.weight": w(hf + "LayerNorm.weight"),
            ours + "ffn_norm.bias": w(hf + "LayerNorm.bias"),
            ours + "ffn.0.weight": w(hf + "intermediate.dense.weight"),
            ours + "ffn.0.bias": w(hf + "intermediate.dense.bias"),
            ours + "ffn.2.weight": w(hf + "output.dense.weight"),
            ours + "ffn.2.bias": w(hf + "output.dense.bias"),
        })
    state["final_norm.weight"] = w("encoder.emb_layer_norm_after.weight")
    state["final_norm.bias"] = w("encoder.emb_layer_norm_after.bias")
    return state


def esm_head_state(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MLM head's weights (``LanguageModelHead``: dense, norm, decoder) from ESM's LM head,
    {} for an ``EsmModel`` without one. The decoder's weight is the embedding's (tied)."""
    if "lm_head.dense.weight" not in weights:
        return {}
    rows = torch.tensor(OUR_ROWS)
    embedding = next(v for k, v in weights.items() if k.endswith("word_embeddings.weight"))
    return {"dense.weight": weights["lm_head.dense.weight"],
            "dense.bias": weights["lm_head.dense.bias"],
            "norm.weight": weights["lm_head.layer_norm.weight"],
            "norm.bias": weights["lm_head.layer_norm.bias"],
            # tied in ESM-2 (save_pretrained may store it once, under the embedding's name)
            "decoder.weight": weights.get("lm_head.decoder.weight", embedding)[rows],
            "decoder.bias": weights["lm_head.bias"][rows]}


def hf_folder(init: Any) -> Path | None:
    """The folder of a ``backbone.init`` of the form ``hf:PATH``; None for any other init."""
    text = str(init or "")
    return Path(text[3:]).expanduser() if text.startswith("hf:") else None


def esm_backbone_section(section: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``section`` (a config's backbone) with the shape of the ESM-2 model in ``folder``: a
    Transformer preset keeps its name, anything else becomes ``esm2-8m`` (the options set every
    size)."""
    from selfsup.backbones.transformer import TransformerEncoder
    from selfsup.registry import BACKBONES

    config = read_esm_config(folder)
    name = section.get("name")
    factory = BACKBONES.get(name) if name in BACKBONES else None
    if getattr(factory, "encoder_class", None) is not TransformerEncoder:
        name = "esm2-8m"
    return {**section, "name": name, **esm_backbone_options(config)}


def load_esm_weights(encoder: torch.nn.Module, method: torch.nn.Module, folder: Path) -> None:
    """ESM-2's weights into ``encoder`` (strictly) and, when ``method`` has a masked-LM head
    (``head``, a ``LanguageModelHead``), ESM's LM head into it: ``mlm`` then continues ESM-2's
    own pretraining."""
    from selfsup.backbones.transformer import LanguageModelHead

    config, weights = read_esm_folder(folder)
    encoder.load_state_dict(esm_encoder_state(config, weights))
    head = getattr(method, "head", None)
    head_state = esm_head_state(weights)
    if isinstance(head, LanguageModelHead) and head_state:
        head.load_state_dict(head_state)


UNUSED_LOGIT = -1e4  # the bias of ESM's tokens selfsup has no use for (. - <null_1>): never chosen


def esm_export(encoder: torch.nn.Module, head: torch.nn.Module | None
               ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json, model.safetensors' tensors) of an ``EsmForMaskedLM`` holding selfsup's
    Transformer (and its MLM ``head`` when given, else a head that is the identity around the
    tied embedding): the inverse of the reading above. ESM's three tokens selfsup lacks get zero
    embeddings and a bias that is never chosen."""
    o = encoder.options
    if o.positions != "rotary" or o.causal or o.pool != "mean" or (o.tokenizer or {}).get(
            "name") != "protein":
        raise ConfigError("the hf export writes ESM-2: a protein Transformer with rotary "
                          "positions, not causal; this encoder is not one")
    mine = encoder.state_dict()
    rows = torch.tensor(OUR_ROWS)

    def spread(ours: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        full = torch.full((len(ESM_TOKENS), *ours.shape[1:]), fill, dtype=ours.dtype)
        full[rows] = ours
        return full

    embedding = spread(mine["token_embedding.weight"])
    weights = {"esm.embeddings.word_embeddings.weight": embedding}
    for i in range(o.depth):
        hf, ours = f"esm.encoder.layer.{i}.", f"blocks.{i}."
        attention = hf + "attention."
        for part, chunk in zip(("query", "key", "value"), mine[ours + "qkv.weight"].chunk(3)):
            weights[f"{attention}self.{part}.weight"] = chunk.contiguous()
        for part, chunk in zip(("query", "key", "value"), mine[ours + "qkv.bias"].chunk(3)):
            weights[f"{attention}self.{part}.bias"] = chunk.contiguous()
        weights.update({
            attention + "LayerNorm.weight": mine[ours + "attn_norm.weight"],
            attention + "LayerNorm.bias": mine[ours + "attn_norm.bias"],
            attention + "output.dense.weight": mine[ours + "attn_out.weight"],
            attention + "output.dense.bias": mine[ours + "attn_out.bias"],
            hf + "LayerNorm.weight": mine[ours + "ffn_norm.weight"],
            hf + "LayerNorm.bias": mine[ours + "ffn_norm.bias"],
            hf + "intermediate.dense.weight": mine[ours + "ffn.0.weight"],
            hf + "intermediate.dense.bias": mine[ours + "ffn.0.bias"],
            hf + "output.dense.weight": mine[ours + "ffn.2.weight"],
            hf + "output.dense.bias": mine[ours + "ffn.2.bias"],
        })
    weights["esm.encoder.emb_layer_norm_after.weight"] = mine["final_norm.weight"]
    weights["esm.encoder.emb_layer_norm_after.bias"] = mine["final_norm.bias"]
    if head is not None:
        h = head.state_dict()
        weights.update({"lm_head.dense.weight": h["dense.weight"], "lm_head.dense.bias": h["dense.bias"],
                        "lm_head.layer_norm.weight": h["norm.weight"],
                        "lm_head.layer_norm.bias": h["norm.bias"],
                        "lm_head.decoder.weight": spread(h["decoder.weight"]),
                        "lm_head.bias": spread(h["decoder.bias"], UNUSED_LOGIT)})
    config = {
        "architectures": ["EsmForMaskedLM" if head is not None else "EsmModel"], "model_type": "esm", "vocab_size": len(ESM_TOKENS),
        "hidden_size": o.dim, "num_hidden_layers": o.depth, "num_attention_heads": o.num_heads,
        "intermediate_size": o.ffn_dim, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "max_position_embeddings": o.max_positions,
        "position_embedding_type": "rotary", "rope_theta": o.rotary_base,
        "layer_norm_eps": o.norm_eps, "emb_layer_norm_before": False,
        "token_dropout": bool(o.token_dropout), "pad_token_id": ESM_TOKENS.index("<pad>"),
        "mask_token_id": ESM_TOKENS.index("<mask>"), "eos_token_id": ESM_TOKENS.index("<eos>"),
        "cls_token_id": ESM_TOKENS.index("<cls>"), "tie_word_embeddings": head is None or bool(
            head.decoder.weight is encoder.token_embedding.weight),
        "is_folding_model": False,
    }
    return config, {key: value.contiguous() for key, value in weights.items()}

