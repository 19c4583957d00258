"""notebooks/llmcpu_colab.ipynb executed headless on CPU (a tiny run: tables and heatmaps must come out), and the
helpers it calls (llmcpu/ops/notebook.py): runtime detection from faked environments, the commands it builds, its
streaming, and the report files it shows."""

import base64
import json
import os
import re
import subprocess
import sys
import types

import nbformat
import pytest
from nbclient import NotebookClient

from llmcpu.ops import notebook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "llmcpu_colab.ipynb")
REPO_URL = "https://github.com/llmcpu/llmcpu"
# As small as a valid run gets: two ISAs (a 2 × 2 matrix), 10 steps, no generation (bits per byte only); ~20 s.
TINY = (
  "compilers=char,char+perm:1 steps=10 train.batch_size=8 data.length=64 train.log_every=5 "
  "crosseval.max_docs=8 crosseval.coherence=False"
)


def _kernel(tmp_path, monkeypatch) -> str:
  """A kernelspec running this interpreter (a user-wide 'python3' kernelspec could name another Python)."""
  spec = tmp_path / "jupyter" / "kernels" / "llmcpu-test"
  spec.mkdir(parents=True)
  argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
  (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "llmcpu test", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  return "llmcpu-test"


def _load() -> nbformat.NotebookNode:
  return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_runs_a_tiny_experiment_on_cpu(tmp_path, monkeypatch):
  nb = _load()
  (i,) = [k for k, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  workdir = tmp_path / "work"
  injected = f"RUNTIME = 'cpu'\nINSTALL = False\nWORKDIR = {str(workdir)!r}\nOVERRIDES = {TINY!r}\n"
  nb.cells.insert(i + 1, nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
  # Run where Jupyter would: beside the notebook, inside the checkout (so nothing is cloned).
  client = NotebookClient(
    nb, timeout=300, kernel_name=_kernel(tmp_path, monkeypatch), resources={"metadata": {"path": f"{ROOT}/notebooks"}}
  )
  client.execute()

  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  streamed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "runtime: cpu" in streamed and "configs/experiments/quickstart.py" in streamed
  assert "== train [2/2]" in streamed and "== done in" in streamed, streamed[-2000:]  # progress came through
  shown = [o for o in outputs if o.output_type == "display_data"]
  markdown = [o.data["text/markdown"] for o in shown if "text/markdown" in o.data]
  assert len(markdown) == 1 and "## bits_per_byte" in markdown[0]
  assert re.search(r"\| model ISA · arch \| char \| char-perm1 \|\n\|---\|", markdown[0])
  assert re.search(r"\| char · decoder \| \*\*\d+\.\d{3} \(", markdown[0])  # the native cell, bold, with its interval
  images = [base64.b64decode(o.data["image/png"]) for o in shown if "image/png" in o.data]
  assert images and all(png.startswith(b"\x89PNG\r\n") for png in images)
  assert len(list(workdir.glob("report/python_docs*/heatmaps/bits_per_byte.png"))) == 1  # WORKDIR was used


def test_notebook_shape():
  nb = _load()
  code = [c.source for c in nb.cells if c.cell_type == "code"]
  text = "\n".join(c.source for c in nb.cells)
  assert "parameters" in nb.cells[1].metadata["tags"]
  for name in ("RUNTIME", "WORKDIR", "CONFIG", "OVERRIDES", "INSTALL", "REPO_URL"):
    assert re.search(rf"^{name} = .*# @param", code[0], re.M), name  # a Colab form field
  assert text.count("github.com") == 1 and code[0].count(REPO_URL) == 1  # a fork changes one line
  assert not re.search(r"^\s*(import|from) jax", text, re.M)  # the kernel never imports jax (llmcpu/ops/notebook.py)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs
  readme = open(os.path.join(ROOT, "README.md")).read()
  (badge,) = re.findall(r"https://colab\.research\.google\.com/github/llmcpu/llmcpu/blob/main/(\S+?\.ipynb)", readme)
  assert os.path.join(ROOT, badge) == NOTEBOOK


def test_requirements_pin_the_notebook_stack():
  import importlib.metadata as md

  text = open(os.path.join(ROOT, "requirements.txt")).read()
  for name in ("nbclient", "nbformat", "ipykernel"):
    (pin,) = re.findall(rf"^{name}==(\S+)$", text, re.M)
    assert md.version(name) == pin, name


# ------------------------------------------------------------------------------------------------------------------
# llmcpu/ops/notebook.py
# ------------------------------------------------------------------------------------------------------------------


def detect(dev, environ=None, **kwargs) -> str:
  """detect_runtime on a faked machine: ``dev`` as /dev, no PCI devices and no nvidia-smi unless given."""
  kwargs = {"pci": str(dev / "no-pci"), "which": lambda name: None, **kwargs}
  return notebook.detect_runtime(environ or {}, dev=str(dev), **kwargs)


@pytest.mark.parametrize("var", ["TPU_ACCELERATOR_TYPE", "TPU_NAME", "COLAB_TPU_ADDR"])
def test_tpu_from_its_environment(tmp_path, var):
  assert detect(tmp_path, {var: "v2-8"}) == "tpu"
  assert detect(tmp_path, {var: ""}) == "cpu"


@pytest.mark.parametrize(
  "files, want",
  [
    (["accel0"], "tpu"),  # v2–v4
    (["vfio/0", "vfio/vfio"], "tpu"),  # v5e and later
    (["vfio/vfio"], "cpu"),  # the vfio module alone is no chip
    (["accelerometer", "null"], "cpu"),
  ],
)
def test_tpu_from_its_devices(tmp_path, files, want):
  for f in files:
    (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / f).write_text("")
  assert detect(tmp_path) == want


def test_tpu_from_the_pci_bus(tmp_path):
  def device(slot, vendor, device):
    (tmp_path / slot).mkdir()
    (tmp_path / slot / "vendor").write_text(vendor + "\n")
    (tmp_path / slot / "device").write_text(device + "\n")

  device("0000:00:04.0", "0x1ae0", "0x0042")  # Google's network card (gVNIC): every Compute Engine VM has one
  device("0000:00:05.0", "0x10de", "0x1eb8")  # an NVIDIA T4
  (tmp_path / "0000:00:06.0").mkdir()  # unreadable: skipped
  assert detect(tmp_path / "dev", pci=str(tmp_path)) == "cpu"
  device("0000:00:07.0", "0x1ae0", "0x0063")  # a TPU v5e chip
  assert detect(tmp_path / "dev", pci=str(tmp_path)) == "tpu"


def test_gpu_only_when_nvidia_smi_lists_one(tmp_path):
  calls = []

  def smi(returncode, stdout):
    def run(argv, **kwargs):
      calls.append(argv)
      return subprocess.CompletedProcess(argv, returncode, stdout, "")

    return run

  which = {"nvidia-smi": "/usr/bin/nvidia-smi"}.get
  gpu = "GPU 0: Tesla T4 (UUID: GPU-1234)\n"
  assert detect(tmp_path, which=which, run=smi(0, gpu)) == "gpu"
  assert calls == [["/usr/bin/nvidia-smi", "-L"]]
  no_driver = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
  assert detect(tmp_path, which=which, run=smi(9, no_driver)) == "cpu"
  assert detect(tmp_path, which=which, run=smi(0, "")) == "cpu"

  def hangs(argv, **kwargs):
    raise subprocess.TimeoutExpired(argv, 30)

  assert detect(tmp_path, which=which, run=hangs) == "cpu"
  # A TPU VM wins over a stray nvidia-smi.
  assert detect(tmp_path, {"TPU_NAME": "x"}, which=which, run=smi(0, gpu)) == "tpu"


def test_check_runtime():
  assert notebook.check_runtime(" GPU ") == "gpu"
  assert notebook.check_runtime("auto") in notebook.RUNTIMES
  with pytest.raises(ValueError, match="choose auto, cpu, gpu, tpu"):
    notebook.check_runtime("cuda")


def test_install_command_pins_jax_from_requirements(tmp_path):
  reqs = "# Stack.\njaxlib==9.9.9\njax==1.2.3  # pinned\n\n# Tests.\nipykernel==1.0\nnbclient==2.0\npytest==3.0\n-e .\n"
  (tmp_path / "requirements.txt").write_text(reqs)
  # The kernel's own packages are left alone; everything else is installed as pinned.
  base = ["py", "-m", "pip", "install", "-q", "jaxlib==9.9.9", "jax==1.2.3", "pytest==3.0", "-e", "."]
  assert notebook.install_command("cpu", str(tmp_path), python="py") == base
  assert notebook.install_command("gpu", str(tmp_path), python="py") == [*base, "jax[cuda12]==1.2.3"]
  tpu = [*base, "jax[tpu]==1.2.3", "-f", "https://storage.googleapis.com/jax-releases/libtpu_releases.html"]
  assert notebook.install_command("tpu", str(tmp_path), python="py") == tpu
  with pytest.raises(ValueError, match="unknown runtime 'rocm'"):
    notebook.install_command("rocm", str(tmp_path))
  # The repository's own requirements: every pin but the kernel's, and its jax pin for the accelerator wheel.
  text = open(os.path.join(ROOT, "requirements.txt")).read()
  pins = re.findall(r"^([A-Za-z][\w.-]*==\S+)", text, re.M)
  (pin,) = re.findall(r"^jax==(\S+)$", text, re.M)
  cmd = notebook.install_command("gpu", ROOT)
  assert cmd[0] == sys.executable and cmd[-1] == f"jax[cuda12]=={pin}"  # the kernel's own Python
  assert cmd[5:-3] == [p for p in pins if p.split("==")[0] not in notebook.KERNEL_PACKAGES]
  assert cmd[-3:-1] == ["-e", "."]


def test_experiment_command():
  cmd = notebook.experiment_command("cpu", "runs/colab", python="py")
  assert cmd == ["py", "scripts/experiment.py", "--config=configs/experiments/quickstart.py", "--workdir=runs/colab"]
  for runtime in ("gpu", "tpu"):
    cmd = notebook.experiment_command(runtime, "gs://b/x", "steps=50 config.seeds=0,1 --config.archs='decoder'")
    assert cmd[2:] == [
      "--config=configs/experiments/colab_accel.py",
      "--workdir=gs://b/x",
      "--config.steps=50",
      "--config.seeds=0,1",
      "--config.archs=decoder",
    ]
  cmd = notebook.experiment_command("gpu", "w", ["steps=5"], config="configs/experiments/headline.py")
  assert cmd[2:] == ["--config=configs/experiments/headline.py", "--workdir=w", "--config.steps=5"]
  for path in set(notebook.CONFIGS.values()):
    assert os.path.isfile(os.path.join(ROOT, path)), path


def test_stream_copies_output_live_and_raises_on_failure(tmp_path):
  import io

  out = io.StringIO()
  script = "import sys; print('step 1'); print('oops', file=sys.stderr); print('step 2')"
  notebook.stream([sys.executable, "-c", script], cwd=str(tmp_path), out=out)
  lines = out.getvalue().splitlines()
  assert lines[0].startswith("$ ") and lines[1:] == ["step 1", "oops", "step 2"]  # stderr too, in order
  with pytest.raises(subprocess.CalledProcessError, match="exit status 3"):
    notebook.stream([sys.executable, "-c", "raise SystemExit(3)"], out=io.StringIO())


def test_stream_passes_an_interrupt_on(tmp_path):
  """The stop button interrupts the kernel; the child gets SIGINT (a training run saves a checkpoint) and is waited
  for before the interrupt goes on."""

  class Stop:
    def write(self, text):
      if text == "ready\n":  # the child is up (not the echoed command line)
        raise KeyboardInterrupt

    def flush(self):
      pass

  saved = tmp_path / "saved"
  script = (
    "import signal, sys, time\n"
    f"signal.signal(signal.SIGINT, lambda *a: (open({str(saved)!r}, 'w').close(), sys.exit(0)))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
  )
  with pytest.raises(KeyboardInterrupt):
    notebook.stream([sys.executable, "-c", script], out=Stop())
  assert saved.exists()


def test_report_files_lists_finished_reports_in_order(tmp_path):
  def report(corpus, heatmaps, finished=True):
    d = tmp_path / "report" / corpus
    (d / "heatmaps").mkdir(parents=True)
    (d / "summary.md").write_text("# Cross-ISA evaluation\n")
    if finished:
      (d / "results.jsonl").write_text("{}\n")
    for name in heatmaps:
      (d / "heatmaps" / f"{name}.png").write_bytes(b"\x89PNG")

  assert notebook.report_files(str(tmp_path)) == []  # nothing run yet
  report("programs", ["isa_overlap", "relevance", "bits_per_byte"])
  report("python_docs", ["bits_per_byte"], finished=False)  # cut short: results.jsonl is written last
  (tmp_path / "report" / "experiment.json").write_text("{}")
  ((corpus, summary, pngs),) = notebook.report_files(str(tmp_path))
  d = tmp_path / "report" / "programs"
  assert (corpus, summary) == ("programs", str(d / "summary.md"))
  assert pngs == [str(d / "heatmaps" / "bits_per_byte.png"), str(d / "heatmaps" / "relevance.png")]


def test_mount_storage_in_colab_only(monkeypatch):
  notebook.mount_storage("/content/drive/MyDrive/runs")  # not in Colab: nothing to do
  calls = []
  colab = types.ModuleType("google.colab")
  colab.drive = types.SimpleNamespace(mount=lambda path: calls.append(("mount", path)))
  colab.auth = types.SimpleNamespace(authenticate_user=lambda: calls.append(("auth",)))
  monkeypatch.setitem(sys.modules, "google.colab", colab)
  monkeypatch.setitem(sys.modules, "google.colab.drive", colab.drive)
  monkeypatch.setitem(sys.modules, "google.colab.auth", colab.auth)
  for workdir in ("runs/colab", "/content/drive/MyDrive/llmcpu", "gs://bucket/llmcpu"):
    notebook.mount_storage(workdir)
  assert calls == [("mount", "/content/drive"), ("auth",)]
