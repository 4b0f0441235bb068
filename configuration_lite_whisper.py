"""Configuration for LiteWhisper: a Whisper model whose encoder linears may be factored into low rank.

LiteWhisper (LiteASR, arXiv 2502.20583) replaces some of the six linear layers of each Whisper encoder layer
(`q_proj`, `k_proj`, `v_proj`, `out_proj` in self-attention, `fc1`, `fc2` in the MLP) by two thin matrices.
`LiteWhisperConfig` is a `WhisperConfig` plus one field, `low_rank_config`: a list with one dict per encoder
layer that maps slot names to ranks, e.g. `[{"q_proj": 128, "fc1": 512}, {}, ...]`. A slot that is absent
stays a dense `nn.Linear`; `None` or `[]` means no compression at all. This is the schema of the published
`efficient-speech/lite-whisper-*` checkpoints, which must keep loading unchanged.

This file travels verbatim to every Hub repo we publish: it imports transformers only.
"""

from transformers import WhisperConfig

ATTENTION_SLOTS = ("q_proj", "k_proj", "v_proj", "out_proj")
MLP_SLOTS = ("fc1", "fc2")
LOW_RANK_SLOTS = ATTENTION_SLOTS + MLP_SLOTS


class LowRankConfigError(ValueError):
    """`low_rank_config` does not describe a valid set of ranks for this model's encoder."""


class LiteWhisperConfig(WhisperConfig):
    model_type = "lite-whisper"

    def __init__(self, low_rank_config=None, **kwargs):
        super().__init__(**kwargs)
        self.low_rank_config = low_rank_config
        validate_low_rank_config(low_rank_config, self)
        # transformers switches Whisper-specific behaviour (the ASR pipeline's Whisper mode with timestamps and
        # chunking, generate's decoder prompt handling) on `config.model_type == "whisper"`. A LiteWhisper model
        # is a Whisper model in every way those checks care about, so at run time we answer "whisper". The
        # serialised config keeps the class attribute, "lite-whisper" (`to_dict` writes `type(self).model_type`),
        # so the JSON stays exactly the published schema and AutoConfig still resolves our class.
        self.model_type = "whisper"

    def layer_ranks(self, layer_index: int) -> dict:
        """The `{slot: rank}` dict of one encoder layer (empty when that layer is fully dense)."""
        if not self.low_rank_config:
            return {}
        return dict(self.low_rank_config[layer_index])


def slot_shape(config: WhisperConfig, slot: str) -> tuple:
    """(in_features, out_features) of one encoder linear slot."""
    if slot in ATTENTION_SLOTS:
        return config.d_model, config.d_model
    if slot == "fc1":
        return config.d_model, config.encoder_ffn_dim
    if slot == "fc2":
        return config.encoder_ffn_dim, config.d_model
    raise LowRankConfigError(f"unknown encoder slot {slot!r}; expected one of {', '.join(LOW_RANK_SLOTS)}")


def validate_low_rank_config(low_rank_config, config: WhisperConfig) -> None:
    """Raise `LowRankConfigError` naming the first problem in `low_rank_config`, if any."""
    if low_rank_config is None:
        return
    if not isinstance(low_rank_config, (list, tuple)):
        raise LowRankConfigError(
            f"low_rank_config must be a list with one dict per encoder layer, got {type(low_rank_config).__name__}"
        )
    if len(low_rank_config) == 0:
        return
    if len(low_rank_config) != config.encoder_layers:
        raise LowRankConfigError(
            f"low_rank_config has {len(low_rank_config)} entries but the encoder has "
            f"{config.encoder_layers} layers (encoder_layers); give one dict per layer"
        )
    for layer_index, ranks in enumerate(low_rank_config):
        if not isinstance(ranks, dict):
            raise LowRankConfigError(
                f"low_rank_config[{layer_index}] must be a dict of slot -> rank, got {type(ranks).__name__}"
            )
        for slot, rank in ranks.items():
            if slot not in LOW_RANK_SLOTS:
                raise LowRankConfigError(
                    f"low_rank_config[{layer_index}] has unknown slot {slot!r}; "
                    f"expected some of {', '.join(LOW_RANK_SLOTS)}"
                )
            if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
                raise LowRankConfigError(
                    f"low_rank_config[{layer_index}][{slot!r}] = {rank!r}: a rank must be a positive int"
                )
            in_features, out_features = slot_shape(config, slot)
            if rank >= min(in_features, out_features):
                raise LowRankConfigError(
                    f"low_rank_config[{layer_index}][{slot!r}] = {rank}: rank must be below "
                    f"min(in, out) = {min(in_features, out_features)} for a {in_features}x{out_features} layer, "
                    "otherwise the layer should stay dense (leave the slot out)"
                )


def _register_whisper_preprocessing() -> None:
    """LiteWhisper uses Whisper's feature extractor, tokenizer and processor.

    transformers 4.x's ASR pipeline only loads a feature extractor and tokenizer for configs it finds in the
    Auto mappings; registering our config there makes `pipeline(..., trust_remote_code=True)` work on 4.x as
    it does on 5.x.
    """
    import transformers

    transformers.AutoConfig.register(LiteWhisperConfig.model_type, LiteWhisperConfig, exist_ok=True)
    transformers.AutoFeatureExtractor.register(LiteWhisperConfig, transformers.WhisperFeatureExtractor, exist_ok=True)
    transformers.AutoProcessor.register(LiteWhisperConfig, transformers.WhisperProcessor, exist_ok=True)
    transformers.AutoTokenizer.register(
        LiteWhisperConfig,
        slow_tokenizer_class=transformers.WhisperTokenizer,
        fast_tokenizer_class=getattr(transformers, "WhisperTokenizerFast", None),
        exist_ok=True,
    )


_register_whisper_preprocessing()
