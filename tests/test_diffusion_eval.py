"""Diffusion-unlearning evaluation: UA and retained accuracy by hand, the Judge against a manual forward pass,
FID with judge features against a hand-computed Frechet distance (and with Inception weights from a local file where
torch-fidelity is installed), CLIP score from a local tiny CLIP against its own embeddings, the metrics file and
every error."""

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg
from torch.nn import functional as F

import salun_lightning.metrics.generation as generation
from salun_lightning.diffusion.evaluation import Judge, JudgeFeatures, evaluate_generations, write_metrics
from salun_lightning.metrics.generation import (
    INCEPTION_FEATURES,
    clip_score,
    fid_score,
    find_inception_weights,
    retained_accuracy,
    unlearning_accuracy,
)
from salun_lightning.models import build_classifier, save_weights

MEAN, STD, SIZE, CLASSES = [0.5], [0.25], (8, 8), 3
TOKENIZER = Path(__file__).resolve().parents[1] / "configs" / "diffusion" / "tiny_clip_tokenizer"


def fixed_classifier() -> torch.nn.Module:
    """A small_resnet with seeded weights and non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    net = build_classifier("small_resnet", num_classes=CLASSES, in_channels=1)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("judge") / "model.safetensors"
    save_weights(fixed_classifier(), path)
    return path


@pytest.fixture(scope="module")
def judge(weights) -> Judge:
    return Judge.load(weights, "small_resnet", num_classes=CLASSES, mean=MEAN, std=STD, image_size=SIZE)


def images(n: int, seed: int, size: int = 16, shift: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, size, size, generator=generator) * 2 - 1 + shift).clamp(-1, 1)


def manual_input(x: torch.Tensor) -> torch.Tensor:
    x = F.interpolate((x + 1) / 2, size=SIZE, mode="bilinear", align_corners=False, antialias=True)
    return (x - MEAN[0]) / STD[0]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(A + B - 2 (A B)^1/2), with tr (A B)^1/2 = tr (A^1/2 B A^1/2)^1/2 (stable for the
    singular covariances that dead ReLU features give)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.sqrt(np.clip(linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


# --- UA / retained accuracy ---


def test_unlearning_accuracy_hand_values():
    assert unlearning_accuracy(torch.tensor([0, 0, 3, 1]), forgotten_class=0) == 50.0
    assert unlearning_accuracy(torch.tensor([2, 2]), forgotten_class=2) == 0.0
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [0.0, 5.0, 0.0]])
    assert unlearning_accuracy(logits, forgotten_class=1) == 50.0


def test_retained_accuracy_hand_values():
    assert retained_accuracy(torch.tensor([1, 2, 2, 1]), torch.tensor([1, 2, 1, 1])) == 75.0
    logits = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    assert retained_accuracy(logits, torch.tensor([1, 1])) == 50.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: unlearning_accuracy(torch.zeros(0, dtype=torch.long), 0), "is empty"),
        (lambda: unlearning_accuracy(torch.zeros(2, 3), forgotten_class=3), r"forgotten_class must lie in \[0, 3\)"),
        (lambda: unlearning_accuracy(torch.tensor([0, 1]), forgotten_class=-1), "forgotten_class must lie in"),
        (lambda: unlearning_accuracy(torch.tensor([0.0, 1.0]), 0), "must be integer class indices"),
        (lambda: unlearning_accuracy(torch.zeros(2, 3, 1), 0), r"shape \(N, C\) or \(N,\)"),
        (lambda: unlearning_accuracy(torch.tensor([[float("nan"), 0.0]]), 0), "contain NaN"),
        (lambda: retained_accuracy(torch.tensor([1, 2]), torch.tensor([1, 2, 2])), r"must have shape \(2,\)"),
        (lambda: retained_accuracy(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)), "empty"),
        (lambda: retained_accuracy(torch.zeros(2, 3), torch.tensor([1, 3])), r"intended_classes must lie in \[0, 3\)"),
        (lambda: retained_accuracy(torch.tensor([1, -1]), torch.tensor([1, 1])), "preds must lie in"),
        (lambda: retained_accuracy(torch.tensor([1, 1]), torch.tensor([1.0, 1.0])), "must be integer class"),
    ],
)
def test_accuracy_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- Judge ---


def test_judge_predict_and_features_match_a_manual_forward(judge):
    net, x = fixed_classifier(), images(6, seed=1)
    with torch.no_grad():
        logits = net(manual_input(x))
        features = net.pool(net.stages(net.stem(manual_input(x)))).flatten(1)
    assert (judge.head_name, judge.num_classes, judge.feature_dim) == ("fc", CLASSES, 64)
    torch.testing.assert_close(judge(x), logits)
    assert torch.equal(judge.predict(x), logits.argmax(1))
    assert judge.features(x).shape == (6, 64)
    torch.testing.assert_close(judge.features(x), features)


def test_judge_batches_clamps_and_takes_uint8(judge):
    x = images(7, seed=2)
    small_batches = Judge(fixed_classifier(), MEAN, STD, SIZE, batch_size=3)
    torch.testing.assert_close(small_batches.features(x), judge.features(x))
    assert torch.equal(judge.predict(x * 3), judge.predict(x.mul(3).clamp(-1, 1)))
    as_bytes = ((x + 1) * 127.5).round().to(torch.uint8)
    torch.testing.assert_close(judge(as_bytes), judge(as_bytes.float() / 127.5 - 1))


class RegisteredBackwards(torch.nn.Module):
    """The head is registered before the hidden layer: the features must follow call order, not registration."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(5, 2)
        self.hidden = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(x.flatten(1))))


def test_judge_features_are_the_input_of_the_last_linear_called():
    torch.manual_seed(0)
    net = RegisteredBackwards()
    judge = Judge(net, [0.5], [0.5], (2, 2))
    x = torch.rand(3, 1, 2, 2) * 2 - 1
    assert (judge.head_name, judge.num_classes, judge.feature_dim) == ("head", 2, 5)
    torch.testing.assert_close(judge.features(x), torch.relu(net.hidden(x.flatten(1))).detach())


def test_judge_stays_in_eval_mode(judge):
    judge.train()
    assert not any(module.training for module in judge.modules())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: Judge(fixed_classifier(), [0.5], [0.2, 0.2], SIZE), "one value per channel"),
        (lambda: Judge(fixed_classifier(), [0.5], [0.0], SIZE), "std values must be positive"),
        (lambda: Judge(fixed_classifier(), [0.5], [0.2], (8, 0)), "positive sides"),
        (lambda: Judge(torch.nn.Conv2d(1, 2, 3), [0.5], [0.2], SIZE), "calls no nn.Linear"),
        (lambda: Judge.load("x.safetensors", "small_resnet", dataset="mnist"), "unknown dataset 'mnist'"),
        (lambda: Judge.load("x.safetensors", "small_resnet", num_classes=3, mean=[0.5]), "needs std, image_size"),
    ],
)
def test_judge_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_judge_load_checks_weights_and_images(judge, weights):
    with pytest.raises(ValueError, match="do not fit the SmallResNet"):
        Judge.load(weights, "small_resnet", dataset="digits")  # 10 classes, not 3
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Judge.load(weights.with_name("missing.safetensors"), "small_resnet", dataset="digits")
    with pytest.raises(ValueError, match=r"images must have shape \(B, 1, H, W\)"):
        judge.predict(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="non-empty"):
        judge.features(torch.zeros(0, 1, 8, 8))


# --- FID ---


def test_fid_with_judge_features_matches_a_hand_computed_frechet_distance(judge, monkeypatch):
    monkeypatch.setattr(generation, "find_inception_weights", lambda path=None: None)
    real, fake = images(160, seed=3), images(120, seed=4, shift=0.4)
    same, name = fid_score(real, real, JudgeFeatures(judge))
    shifted, _ = fid_score(real, fake, JudgeFeatures(judge), batch_size=50)
    expected = frechet_distance(judge.features(real).double().numpy(), judge.features(fake).double().numpy())
    assert name == "judge-penultimate-64" == JudgeFeatures(judge).name
    assert abs(same) < 1e-3 * shifted
    assert shifted > 0.01
    assert shifted == pytest.approx(expected, rel=1e-3)


def test_fid_auto_prefers_inception_when_its_weights_are_at_hand(judge, monkeypatch, tmp_path):
    calls = {}

    class RecordingFID(torch.nn.Module):
        def __init__(self, feature, feature_extractor_weights_path=None):
            super().__init__()
            calls.update(feature=feature, weights=feature_extractor_weights_path, inputs=[])

        def update(self, imgs, real):
            calls["inputs"].append((imgs.dtype, tuple(imgs.shape), int(imgs.min()), int(imgs.max())))

        def compute(self):
            return torch.tensor(1.5)

    monkeypatch.setattr(generation, "find_inception_weights", lambda path=None: tmp_path / "w.pth")
    monkeypatch.setattr(generation, "FrechetInceptionDistance", RecordingFID)
    real = torch.cat([torch.full((2, 1, 4, 4), -1.0), torch.full((1, 1, 4, 4), 1.0)])
    assert fid_score(real, real, JudgeFeatures(judge)) == (1.5, INCEPTION_FEATURES)
    assert calls["feature"] == 2048 and calls["weights"] == str(tmp_path / "w.pth")
    assert calls["inputs"] == [(torch.uint8, (3, 3, 4, 4), 0, 255)] * 2
    assert fid_score(real, real, JudgeFeatures(judge), features="judge")[1] == "judge-penultimate-64"


def test_find_inception_weights_never_downloads(monkeypatch, tmp_path):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setattr(generation.importlib.util, "find_spec", lambda name: object())  # torch-fidelity "installed"
    assert find_inception_weights() is None
    cached = hub / "checkpoints" / generation.INCEPTION_WEIGHTS_FILENAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert find_inception_weights() == cached
    with pytest.raises(FileNotFoundError, match="do not exist"):
        find_inception_weights(tmp_path / "missing.pth")
    monkeypatch.setattr(generation.importlib.util, "find_spec", lambda name: None)
    assert find_inception_weights() is None
    with pytest.raises(ModuleNotFoundError, match="need torch-fidelity"):
        find_inception_weights(cached)


def test_fid_errors(judge, monkeypatch):
    monkeypatch.setattr(generation, "find_inception_weights", lambda path=None: None)
    real = images(4, seed=5)
    with pytest.raises(ValueError, match="N >= 2"):
        fid_score(real[:1], real, JudgeFeatures(judge))
    with pytest.raises(ValueError, match=r"fake_images must be a \(N, C, H, W\)"):
        fid_score(real, real[0], JudgeFeatures(judge))
    with pytest.raises(ValueError, match=r"or fallback features: pass JudgeFeatures\(judge\)"):
        fid_score(real, real)
    with pytest.raises(ValueError, match="Inception features need torch-fidelity"):
        fid_score(real, real, JudgeFeatures(judge), features="inception")
    with pytest.raises(ValueError, match="features must be"):
        fid_score(real, real, JudgeFeatures(judge), features="clip")
    with pytest.raises(ValueError, match="batch_size must be positive"):
        fid_score(real, real, JudgeFeatures(judge), batch_size=0)


def test_fid_with_inception_weights_from_a_local_file(monkeypatch, tmp_path):
    """The documented path: torch-fidelity installed, the weights file given (or in the hub cache); no download."""
    pytest.importorskip("torch_fidelity")
    import torch_fidelity.feature_extractor_inceptionv3 as inception
    from torchmetrics.image.fid import NoTrainInceptionV3

    def no_download(*args, **kwargs):
        raise AssertionError("the Inception weights were downloaded")

    real_load = inception.FeatureExtractorInceptionV3.load_state_dict
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
    monkeypatch.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kwargs: None)
    torch.manual_seed(0)
    net = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])  # random weights, none fetched
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # features that vary between images
            module.running_var.fill_(0.05)
            module.running_mean.uniform_(-0.1, 0.1)
    monkeypatch.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", real_load)
    monkeypatch.setattr(inception, "load_state_dict_from_url", no_download)
    weights = tmp_path / generation.INCEPTION_WEIGHTS_FILENAME
    torch.save(net.state_dict(), weights)

    real = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    fake = (torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 0.5).clamp(-1, 1)
    fid, name = fid_score(real, fake, features="inception", inception_weights=weights)
    extractor = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    with torch.no_grad():
        a, b = (extractor(generation._uint8_rgb(x)).double().numpy() for x in (real, fake))
    assert name == INCEPTION_FEATURES
    assert fid == pytest.approx(frechet_distance(a, b), rel=1e-3)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / weights.name).write_bytes(weights.read_bytes())
    assert fid_score(real, fake) == (fid, INCEPTION_FEATURES)  # auto: found in the hub cache


# --- CLIP score ---


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A randomly initialised CLIP (32x32 images, the byte-level tiny tokenizer) saved with its processor. The final
    norms' bias and non-negative projections give every embedding a common positive part, so the cosines are
    positive yet differ from pair to pair."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    text = {"vocab_size": 514, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": 512, "eos_token_id": 513,
            "pad_token_id": 513}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).eval()
    with torch.no_grad():
        for norm in (model.text_model.final_layer_norm, model.vision_model.post_layernorm):
            norm.bias.fill_(0.5)
        for projection in (model.text_projection, model.visual_projection):
            projection.weight.abs_()
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    CLIPProcessor(image_processor=images, tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER)).save_pretrained(path)
    return path


CLIP_PROMPTS = ["a cat", "a dog on a beach", "x", "a very long prompt that the tiny tokenizer must cut at 32", "oil"]


def clip_embeddings(path: Path, images: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor):
    """Image and text embeddings by hand: pixels rescaled and normalised with CLIP's mean and std, the towers'
    pooled outputs through their projections."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(path).eval()
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    with torch.no_grad():
        pooled_images = model.vision_model(pixel_values=(images.float() / 255 - mean) / std).pooler_output
        pooled_text = model.text_model(input_ids=input_ids, attention_mask=mask).pooler_output
        return model.visual_projection(pooled_images), model.text_projection(pooled_text)


def test_clip_score_matches_a_hand_computation_from_the_models_embeddings(tiny_clip, monkeypatch):
    from transformers import CLIPTokenizer

    def no_network(*args, **kwargs):
        raise AssertionError("CLIP score tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    tokens = CLIPTokenizer.from_pretrained(TOKENIZER)(CLIP_PROMPTS, padding=True, truncation=True, max_length=32,
                                                      return_tensors="pt")
    image_embeddings, text_embeddings = clip_embeddings(tiny_clip, images, tokens["input_ids"],
                                                        tokens["attention_mask"])
    cosines = F.cosine_similarity(image_embeddings, text_embeddings)
    assert bool((cosines > 0).all()) and float(cosines.max() - cosines.min()) > 0.02
    expected = (100 * cosines.clamp(min=0)).mean().item()  # Hessel et al.; = max(100 * mean cos, 0) here
    assert clip_score(images, CLIP_PROMPTS, tiny_clip) == pytest.approx(expected, rel=1e-5)
    assert clip_score(images, CLIP_PROMPTS, tiny_clip, batch_size=2) == pytest.approx(expected, rel=1e-5)
    as_float = images.float() / 127.5 - 1  # the package's [-1, 1] range
    assert clip_score(as_float, CLIP_PROMPTS, str(tiny_clip)) == pytest.approx(expected, rel=1e-5)

    # the long prompt keeps its end-of-text token: cutting the ids instead (torchmetrics' own way) pools another token
    assert tokens["input_ids"][3, -1] == 513
    full = CLIPTokenizer.from_pretrained(TOKENIZER)([CLIP_PROMPTS[3]], return_tensors="pt")
    assert full["input_ids"].shape[1] > 32
    _, cut = clip_embeddings(tiny_clip, images[3:4], full["input_ids"][:, :32], full["attention_mask"][:, :32])
    assert not torch.allclose(F.normalize(cut, dim=1), F.normalize(text_embeddings[3:4], dim=1), atol=1e-3)


def test_clip_score_errors(tiny_clip, tmp_path):
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="needs a local CLIP model directory .*nothing is downloaded"):
        clip_score(images, ["a", "b"], None)
    with pytest.raises(FileNotFoundError, match="CLIP model directory .* does not exist"):
        clip_score(images, ["a", "b"], tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        clip_score(images, ["a", "b"], tmp_path)
    (tmp_path / "config.json").write_text((tiny_clip / "config.json").read_text())
    with pytest.raises(ValueError, match="does not hold a loadable CLIP model and processor"):
        clip_score(images, ["a", "b"], tmp_path)  # no weights
    with pytest.raises(ValueError, match="prompts must be a list of 2 strings, one per image, got 3 entries"):
        clip_score(images, ["a", "b", "c"], tiny_clip)
    with pytest.raises(ValueError, match="got a string"):
        clip_score(images, "ab", tiny_clip)
    with pytest.raises(ValueError, match=r"non-empty \(N, C, H, W\) batch with C = 1 or 3"):
        clip_score(images[0], ["a"], tiny_clip)
    with pytest.raises(ValueError, match="uint8 in"):
        clip_score(images.int(), ["a", "b"], tiny_clip)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        clip_score(images, ["a", "b"], tiny_clip, batch_size=0)


# --- evaluate_generations / write_metrics ---


def test_evaluate_generations_and_write_metrics(judge, tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "find_inception_weights", lambda path=None: None)
    generations = {0: images(10, seed=6), 1: images(12, seed=7, shift=0.5), 2: images(8, seed=8, shift=-0.5)}
    real = images(20, seed=9)
    metrics = evaluate_generations(judge, generations, forgotten_class=0, real_retained=real)

    preds = {c: judge.predict(x) for c, x in generations.items()}
    retained_preds = torch.cat([preds[1], preds[2]])
    intended = torch.tensor([1] * 12 + [2] * 8)
    assert metrics["UA"] == unlearning_accuracy(preds[0], 0)
    assert metrics["retained_accuracy"] == retained_accuracy(retained_preds, intended)
    assert metrics["per_class_accuracy"] == {str(c): 100 * (preds[c] == c).double().mean().item() for c in range(3)}
    assert metrics["per_class_accuracy"]["0"] == pytest.approx(100 - metrics["UA"])
    assert metrics["generations_per_class"] == {"0": 10, "1": 12, "2": 8}
    fid = fid_score(real, torch.cat([generations[1], generations[2]]), JudgeFeatures(judge))
    assert (metrics["FID"], metrics["fid_features"]) == fid

    path = write_metrics(tmp_path / "run", {"method": "salun", "seed": 0, **metrics})
    assert path == tmp_path / "run" / "metrics.json"
    assert json.loads(path.read_text()) == {"method": "salun", "seed": 0, **metrics}
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json", "metrics.json"]  # no temporary file
    (path.parent / "run.json").write_text(json.dumps({"method": "salun", "run_id": "r1"}))  # a fit's record
    assert json.loads(write_metrics(path.parent, {"UA": 1.0}).read_text()) == {"UA": 1.0, "run_id": "r1"}
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="which no salun run wrote there"):
        write_metrics(tmp_path / "mine", {"UA": 1.0})


@pytest.mark.parametrize(
    ("classes", "forgotten", "match"),
    [
        ((1, 2), 0, "no images of the forgotten class 0"),
        ((0,), 0, "no retained class"),
        ((0, 3), 0, r"the classes of generations must lie in \[0, 3\)"),
        ((0, 1), 5, r"forgotten_class must lie in \[0, 3\)"),
    ],
)
def test_evaluate_generations_errors(judge, classes, forgotten, match):
    generations = {c: images(2, seed=c) for c in classes}
    with pytest.raises(ValueError, match=match):
        evaluate_generations(judge, generations, forgotten, real_retained=images(4, seed=10))


def test_evaluate_generations_rejects_empty_generations(judge):
    generations = {0: images(2, seed=0), 1: torch.zeros(0, 1, 16, 16)}
    with pytest.raises(ValueError, match=r"classes \[1\] are not non-empty"):
        evaluate_generations(judge, generations, 0, real_retained=images(4, seed=10))
