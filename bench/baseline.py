"""The reference-style baseline, in a fresh process, timed stage by stage: torch + timm,
EfficientNetV2-M at 224 px, one image at a time (how the organisers' reference container works).

Reads the stack with SimpleITK, resizes each patch to 224 px, normalises with ImageNet statistics,
runs the model on a batch of one, takes the softmax's atypical column, writes the result JSON.
Prints one JSON line of seconds: imports, load (create the model, load its weights), infer, write.
Run (needs the dev environment; weights from bench/models.py):
  python -m bench.baseline --input test/input --output /tmp/out --weights bench/.cache/efficientnetv2_m.pth
"""

import time

T0 = time.perf_counter()

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from torchvision import transforms  # noqa: E402

from amf.preprocess import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from bench.timing import job_parser, print_stages  # noqa: E402

ARCH = "efficientnetv2_m"
SIZE = 224
SLUG = "stacked-histopathology-roi-cropouts"


def main() -> None:
    ap = job_parser(__doc__)
    ap.add_argument("--weights", required=True)
    a = ap.parse_args()
    t1 = time.perf_counter()
    model = timm.create_model(ARCH, pretrained=False, num_classes=2)
    model.load_state_dict(torch.load(a.weights, map_location="cpu", weights_only=True))
    model.eval()
    t2 = time.perf_counter()
    path = next(p for p in (Path(a.input) / "images" / SLUG).iterdir() if p.suffix in (".mha", ".tif", ".tiff"))
    stack = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    tf = transforms.Compose(
        [
            transforms.ToPILImage(),
            transforms.Resize((SIZE, SIZE)),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    results = []
    with torch.no_grad():
        for patch in stack:
            p = float(torch.softmax(model(tf(np.ascontiguousarray(patch[..., :3])).unsqueeze(0)), 1)[0, 1])
            results.append({"class": "atypical" if p >= 0.5 else "normal", "confidence": p})
    t3 = time.perf_counter()
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "multiple-mitotic-figure-classification.json").write_text(json.dumps(results, indent=2))
    t4 = time.perf_counter()
    print_stages(T0, t1, t2, t3, t4, len(results), "cpu", None)


if __name__ == "__main__":
    main()
