"""The unit LM: checkpoint format (plain HF, vLLM-native architecture), training on the tiny corpus
(resumable), the hf backend with a real model, and the vllm backend where vLLM imports."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from streamchar.config import load_config
from streamchar.loaders import load_orchestrator, load_unit_lm
from streamchar.orchestrator.backends import HFBackend
from streamchar.orchestrator.model import (
    VLLM_NATIVE,
    OrchestratorCheckpointError,
    build_unit_lm,
    save_unit_lm,
)
from streamchar.orchestrator.session import Orchestrator
from streamchar.orchestrator.text import UnitVocabulary

TINY_LM = [
    "orchestrator.hidden_size=32",
    "orchestrator.layers=2",
    "orchestrator.heads=2",
    "orchestrator.kv_heads=1",
    "orchestrator.intermediate_size=64",
]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    cfg = load_config(None, TINY_LM)
    vocab = UnitVocabulary()
    torch.manual_seed(0)
    model = build_unit_lm(cfg.orchestrator, vocab)
    with torch.no_grad():  # favour the units that move speech on, so random-weight turns finish
        model.lm_head.weight[vocab.unit_offset + 1 :] += (
            0.05 * model.lm_head.weight[vocab.unit_offset + 1 :].sign()
        )
    folder = tmp_path_factory.mktemp("lm")
    save_unit_lm(model, vocab, folder)
    return folder


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_checkpoint_is_a_plain_hf_causal_lm(tmp_path, architecture):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = load_config(None, [*TINY_LM, f"orchestrator.architecture={architecture}"])
    vocab = UnitVocabulary()
    model = build_unit_lm(cfg.orchestrator, vocab)
    save_unit_lm(model, vocab, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"][0] in VLLM_NATIVE and "auto_map" not in config
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # no trust_remote_code, no custom class
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer("<bos> <spk1> /h/ [h|2] <end>", add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-6)


def test_damaged_or_mismatched_checkpoints_are_refused(tmp_path, tiny_lm):
    import shutil

    with pytest.raises(OrchestratorCheckpointError, match="holds no orchestrator"):
        load_unit_lm(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_lm, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(OrchestratorCheckpointError, match="damaged or incomplete"):
        load_unit_lm(broken)
    other = tmp_path / "other"
    shutil.copytree(tiny_lm, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["model"]["vocab"]["<zzz>"] = len(tok["model"]["vocab"])
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match="does not match"):
        load_unit_lm(other)


def _run(orch: Orchestrator, pushes: list[str], chunks: int = 60) -> torch.Tensor:
    for i, piece in enumerate(pushes):
        orch.push_text(piece, final=i == len(pushes) - 1)
    units = []
    for _ in range(chunks):
        chunk = orch.next_chunk()
        units.append(chunk.units[chunk.speaker >= 0])
        if chunk.done:
            break
    return torch.cat(units)


def test_hf_backend_whole_equals_word_by_word(tiny_lm):
    model, vocab, _ = load_unit_lm(tiny_lm)
    text = "Hello there, how are you today? Fine."
    whole = _run(Orchestrator(HFBackend(model), vocab, 12), [text])
    split = _run(Orchestrator(HFBackend(model), vocab, 12), [w + " " for w in text.split()])
    assert len(whole) > 10 and torch.equal(whole, split)


def test_plan_command(tiny_lm, capsys):
    from streamchar.cli import main

    assert (
        main(["plan", "--text", "Hello there, friend.", "--checkpoint", str(tiny_lm), "--word-by-word"]) == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["done"] and all(len(line["frames"]) == 12 for line in lines)
    assert main(["plan", "--text", "Привет", "--checkpoint", str(tiny_lm)]) == 2
    assert "Latin script" in capsys.readouterr().err
    assert main(["plan", "--text", "hi", "--checkpoint", str(tiny_lm / "missing")]) == 2


def test_pointer_logits_processor_constrains_hf_generate(tiny_lm):
    from streamchar.orchestrator.pointer import PointerLogitsProcessor, TurnPointer
    from streamchar.orchestrator.text import Frontend, WordStream

    model, vocab, _ = load_unit_lm(tiny_lm)
    frontend = Frontend()
    pointer = TurnPointer(vocab, frontend.phonemes, vocab.speaker(0), vocab.tempo(2.0))
    pointer.add_words(WordStream().push("Hello world.", final=True))
    pointer.finish()
    context = [vocab.bos, *pointer.start_tokens()]
    for _ in range(6):  # one frame per generate call, the pointer advancing between them
        allowed = pointer.allowed()
        out = model.generate(torch.tensor([context]), max_new_tokens=1, do_sample=False,
                             logits_processor=[PointerLogitsProcessor(pointer.allowed)])  # fmt: skip
        token = int(out[0, -1])
        assert token in allowed
        if token == vocab.end:
            break
        context += [token, *pointer.commit(token)]


def test_hf_backend_cache_matches_full_recompute(tiny_lm):
    model, vocab, _ = load_unit_lm(tiny_lm)
    backend = HFBackend(model)
    tokens = [vocab.bos, vocab.speaker(0), vocab.phoneme(20), vocab.unit(20 * 9 + 3), vocab.unit(0)]
    backend.append(tokens[:2])
    backend.logits()
    backend.append(tokens[2:])
    cached = backend.logits()
    full = model(torch.tensor([tokens])).logits[0, -1]
    assert torch.allclose(cached, full, atol=1e-5)


def test_train_orchestrator_resumes_and_exports(tiny_corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    from streamchar.training.orchestrator import train_orchestrator

    overrides = [*TINY_LM, "train.orchestrator.steps=4", "train.orchestrator.batch_size=2",
                 "train.orchestrator.ckpt_every=2", "train.orchestrator.eval_every=2",
                 "train.orchestrator.eval_sequences=4", "train.orchestrator.max_tokens=256",
                 "train.orchestrator.mixed_precision=no"]  # fmt: skip
    cfg = load_config(None, overrides)
    out = tmp_path / "run"
    first = train_orchestrator(cfg, tiny_corpus, out, max_steps=2, progress=False)
    assert first["step"] == 2 and not first["finished"]
    rows = [json.loads(line) for line in (out / "turns.jsonl").read_text().splitlines()]
    assert rows and all(len(t["units"]) > 0 for r in rows for t in r["turns"])
    # realignment from a ground-truth alignment: a probe that hears exactly the corpus frames puts the
    # pointer at each frame where the training targets put it
    import numpy as np

    from streamchar.orchestrator.dataset import merge_positions
    from streamchar.orchestrator.pointer import realigned_pointer

    size = UnitVocabulary().buckets.size
    for turn in (t for r in rows for t in r["turns"]):
        positions = merge_positions([tuple(p) for p in turn["phonemes"]])
        phonemes = np.array(turn["units"]) // size
        log_probs = np.full((len(phonemes), 70), np.log(0.01 / 69))
        log_probs[np.arange(len(phonemes)), phonemes] = np.log(0.99)
        for cut in (len(phonemes) // 3, len(phonemes)):
            truth = len(merge_positions([tuple(phonemes[:cut][phonemes[:cut] > 0])]))
            assert realigned_pointer(log_probs[:cut], positions) == truth
    second = train_orchestrator(cfg, tiny_corpus, out, progress=False)
    assert second["step"] == 4 and second["finished"]
    assert [c["step"] for c in json.loads((out / "curve.json").read_text())] == [2, 4]
    AutoModelForCausalLM.from_pretrained(out / "final")
    with pytest.raises(ValueError, match="different orchestrator"):
        train_orchestrator(
            load_config(None, [*overrides, "orchestrator.layers=3"]), tiny_corpus, out, progress=False
        )


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is an optional extra (GPU)")
@pytest.mark.gpu
def test_vllm_backend_matches_hf(tiny_lm):
    from streamchar.orchestrator.backends import VLLMBackend

    model, vocab, _ = load_unit_lm(tiny_lm)
    text = "Hello there, how are you today? Fine."
    hf = _run(Orchestrator(HFBackend(model), vocab, 12), [text])
    vllm = _run(Orchestrator(VLLMBackend(str(tiny_lm), gpu_memory_utilization=0.2), vocab, 12), [text])
    assert torch.equal(hf, vllm)


SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny" / "orchestrator"


@pytest.mark.skipif(
    not (SHIPPED / "config.json").is_file(), reason="the tiny orchestrator checkpoint is not shipped"
)
def test_shipped_orchestrator_plans_speech_and_streams_like_whole():
    cfg = load_config()
    text = "Good morning! The strange bracelet is on the table, near 3 yellow cups."
    whole = load_orchestrator(cfg)
    units = _run(whole, [text])
    split = _run(load_orchestrator(cfg), [w + " " for w in text.split()])
    assert torch.equal(units, split)
    speech = units[units != 0]
    # about 2 frames per phoneme at the default tempo: a sane length, every phoneme spoken
    positions = whole.pointer
    assert positions > 40 and positions * 1.2 <= len(speech) <= positions * 4
