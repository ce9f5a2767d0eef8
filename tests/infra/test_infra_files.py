"""The deployment files under infra/ and docs/scaling.md: they parse, and their pieces fit.

Nothing is deployed (no container engine or cluster here): these tests read the files,
check their structure against what Kubernetes, the Dask operator, dask-gateway and Prefect
expect, check that they agree with each other and with the code (entrypoints, parameter
names, torch pin, memory limits), run the image entrypoint's dispatch with stub programs,
and re-run docs/scaling_estimates.py to keep docs/scaling.md in step with it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
import yaml

from pipeline.plan.regions import parse_region

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
PREFECT_FLOWS = REPO / "flows" / "prefect_flows.py"
DEPLOYMENT_NAMES = {"rainfall-watch", "regional-run", "train"}


def _yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _cluster_docs() -> dict[str, dict]:
    return {d["kind"]: d for d in _yaml_docs(INFRA / "dask" / "kubernetes-cluster.yaml")}


def _prefect() -> dict:
    return yaml.safe_load((INFRA / "prefect" / "prefect.yaml").read_text())


def _deployments() -> dict[str, dict]:
    return {d["name"]: d for d in _prefect()["deployments"]}


def _job_template() -> dict:
    return json.loads((INFRA / "prefect" / "k8s-base-job-template.json").read_text())


# ----------------------------------------------------------------------------- helpers

_UNITS = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
          "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def to_bytes(text: str) -> float:
    """Kubernetes quantities (16Gi, 8G) and Dask sizes (16GiB, 8GB) in bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"not a memory quantity: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


_CRON_FIELDS = [(0, 59, {}), (0, 23, {}), (1, 31, {}),
                (1, 12, {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}),
                (0, 7, {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())})]


def cron_expand(expr: str) -> list[set[int]]:
    """The values each of the 5 fields of a standard cron expression matches; ValueError if invalid."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"{expr!r} has {len(fields)} fields, not 5")
    out = []
    for text, (lo, hi, names) in zip(fields, _CRON_FIELDS):
        values: set[int] = set()
        for part in text.split(","):
            m = re.fullmatch(r"(\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/([0-9]+))?", part.lower())
            if not m:
                raise ValueError(f"bad cron item {part!r} in {expr!r}")
            rng, step = m.group(1), int(m.group(2) or 1)
            if step < 1:
                raise ValueError(f"step 0 in {expr!r}")

            def num(tok: str) -> int:
                v = names.get(tok, None)
                if v is None:
                    if not tok.isdigit():
                        raise ValueError(f"bad cron value {tok!r} in {expr!r}")
                    v = int(tok)
                if not lo <= v <= hi:
                    raise ValueError(f"{v} outside {lo}..{hi} in {expr!r}")
                return v

            if rng == "*":
                a, b = lo, hi
            elif "-" in rng:
                a, b = (num(t) for t in rng.split("-"))
                if a > b:
                    raise ValueError(f"inverted range {rng!r} in {expr!r}")
            else:
                a = num(rng)
                b = hi if m.group(2) else a
            values.update(range(a, b + 1, step))
        out.append(values)
    return out


def test_cron_checker_accepts_and_rejects_what_cron_does() -> None:
    assert cron_expand("*/30 * * * *")[0] == {0, 30}
    assert cron_expand("5,35 6-18/6 1 jan-mar mon-fri")[1] == {6, 12, 18}
    assert cron_expand("0 0 * * 7")[4] == {7}
    for bad in ("*/30 * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "*/0 * * * *", "a * * * *", "5-1 * * * *"):
        with pytest.raises(ValueError):
            cron_expand(bad)


def test_memory_quantities_parse_in_both_dialects() -> None:
    assert to_bytes("16Gi") == to_bytes("16GiB") == 16 * 2**30
    assert to_bytes("8G") == to_bytes("8GB") == 8e9
    with pytest.raises(ValueError):
        to_bytes("16 gigs")


# ----------------------------------------------------------------------------- every file parses


def test_every_yaml_and_json_file_in_infra_parses() -> None:
    files = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml"), *INFRA.rglob("*.json")])
    assert len(files) >= 5, files
    for path in files:
        docs = [json.loads(path.read_text())] if path.suffix == ".json" else _yaml_docs(path)
        assert docs and all(isinstance(d, dict) for d in docs), path


# ----------------------------------------------------------------------------- Dask


def _worker_container(doc: dict) -> dict:
    (container,) = doc["spec"]["worker"]["spec"]["containers"]
    return container


def _arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def test_dask_cluster_is_an_operator_daskcluster_with_a_gpu_worker_group() -> None:
    docs = _cluster_docs()
    cluster, gpu = docs["DaskCluster"], docs["DaskWorkerGroup"]
    for doc in (cluster, gpu):
        assert doc["apiVersion"] == "kubernetes.dask.org/v1"
    assert gpu["spec"]["cluster"] == cluster["metadata"]["name"]
    sched = cluster["spec"]["scheduler"]
    assert sched["spec"]["containers"][0]["args"][:2] == ["dask", "scheduler"]
    ports = {p["name"]: p["port"] for p in sched["service"]["ports"]}
    assert ports["tcp-comm"] == 8786
    assert sched["service"]["selector"]["dask.org/cluster-name"] == cluster["metadata"]["name"]

    gc = _worker_container(gpu)
    assert gc["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gc["resources"]["requests"].get("nvidia.com/gpu", 1) == 1  # extended resources: request = limit
    assert _arg(gc["args"], "--resources") == "GPU=1"
    assert gc["image"].endswith("-cuda")
    cc = _worker_container(cluster)
    assert "nvidia.com/gpu" not in cc["resources"]["limits"]
    assert "--resources" not in cc["args"]
    assert cc["image"].endswith("-cpu")


@pytest.mark.parametrize("kind", ["DaskCluster", "DaskWorkerGroup"])
def test_dask_memory_limit_matches_the_container_limit(kind: str) -> None:
    c = _worker_container(_cluster_docs()[kind])
    args = c["args"]
    assert args[:2] == ["dask", "worker"]
    limit = to_bytes(c["resources"]["limits"]["memory"])
    assert to_bytes(_arg(args, "--memory-limit")) == limit
    assert to_bytes(c["resources"]["requests"]["memory"]) == limit
    assert int(_arg(args, "--nthreads")) == int(c["resources"]["limits"]["cpu"])


@pytest.mark.parametrize("kind", ["DaskCluster", "DaskWorkerGroup"])
def test_dask_workers_mount_the_run_volume_and_read_the_key_from_a_secret(kind: str) -> None:
    doc = _cluster_docs()[kind]
    pod = doc["spec"]["worker"]["spec"]
    c = _worker_container(doc)
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    template_claim = _job_template()["variables"]["properties"]["out_volume_claim"]["default"]
    assert claims["out"] == template_claim and mounts["out"] == "/data/out"
    key = {e["name"]: e for e in c["env"]}["PC_SDK_SUBSCRIPTION_KEY"]
    assert "value" not in key and key["valueFrom"]["secretKeyRef"]["name"] == "slidewatch-secrets"


# ----------------------------------------------------------------------------- dask-gateway


def _gateway_handler() -> tuple[object, types.SimpleNamespace]:
    """Run the chart's extraConfig with a stand-in for dask_gateway_server.options."""
    values = yaml.safe_load((INFRA / "dask" / "gateway-options.yaml").read_text())
    (code,) = values["gateway"]["extraConfig"].values()

    class Field:
        def __init__(self, name, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.name, self.args, self.kwargs = name, args, kwargs

    class Options:
        def __init__(self, *fields, handler=None):  # type: ignore[no-untyped-def]
            self.fields, self.handler = fields, handler

    fake = types.ModuleType("dask_gateway_server.options")
    for name in ("Float", "Integer", "Select", "String"):
        setattr(fake, name, type(name, (Field,), {}))
    fake.Options = Options  # type: ignore[attr-defined]
    c = types.SimpleNamespace(Backend=types.SimpleNamespace(), KubeClusterConfig=types.SimpleNamespace())
    saved = {k: sys.modules.get(k) for k in ("dask_gateway_server", "dask_gateway_server.options")}
    sys.modules["dask_gateway_server"] = types.ModuleType("dask_gateway_server")
    sys.modules["dask_gateway_server.options"] = fake
    try:
        exec(compile(code, "gateway-options.yaml:extraConfig", "exec"), {"c": c})
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return c.Backend.cluster_options, c


def test_gateway_options_offer_cores_memory_image_and_a_gpu_profile() -> None:
    options, c = _gateway_handler()
    fields = {f.name: f for f in options.fields}  # type: ignore[attr-defined]
    assert set(fields) == {"profile", "worker_cores", "worker_memory", "image"}
    assert set(fields["profile"].args[0]) == {"cpu", "gpu"}
    assert c.KubeClusterConfig.idle_timeout > 0
    handler = options.handler  # type: ignore[attr-defined]

    cpu = handler(types.SimpleNamespace(profile="cpu", worker_cores=4, worker_memory=16, image=""), user=None)
    assert cpu["worker_memory"] == cpu["worker_memory_limit"] == 16 * 2**30
    assert cpu["worker_cores"] == cpu["worker_threads"] == 4
    assert cpu["image"].endswith("-cpu")
    assert "resources" not in cpu["worker_extra_container_config"]
    assert "DASK_DISTRIBUTED__WORKER__RESOURCES__GPU" not in cpu["environment"]

    gpu = handler(types.SimpleNamespace(profile="gpu", worker_cores=8, worker_memory=32, image=""), user=None)
    assert gpu["image"].endswith("-cuda")
    assert gpu["worker_extra_container_config"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["environment"]["DASK_DISTRIBUTED__WORKER__RESOURCES__GPU"] == "1"
    # the secret comes from Kubernetes, never from an option value
    env = gpu["worker_extra_container_config"]["env"]
    assert env[0]["name"] == "PC_SDK_SUBSCRIPTION_KEY" and "valueFrom" in env[0]
    custom = handler(types.SimpleNamespace(profile="cpu", worker_cores=1, worker_memory=2.5, image="x/y:z"), user=None)
    assert custom["image"] == "x/y:z" and custom["worker_memory"] == int(2.5 * 2**30)


# ----------------------------------------------------------------------------- Prefect


def test_prefect_yaml_declares_the_three_deployments_with_valid_entrypoints_and_pools() -> None:
    doc = _prefect()
    assert str(doc["prefect-version"]).startswith("3.")
    deployments = _deployments()
    assert set(deployments) == DEPLOYMENT_NAMES
    pools = set()
    for name, dep in deployments.items():
        path, _, func = dep["entrypoint"].partition(":")
        assert path == "flows/prefect_flows.py" and func.isidentifier(), dep["entrypoint"]
        pools.add(dep["work_pool"]["name"])
    assert {d["entrypoint"].split(":")[1] for d in deployments.values()} == {
        "rainfall_watch_flow", "regional_run_flow", "train_flow"}
    assert pools == {"slidewatch-process", "slidewatch-k8s"}
    assert deployments["train"]["work_pool"]["job_variables"]["gpu"] == 1
    assert deployments["train"]["work_pool"]["job_variables"]["image"].endswith("-cuda")


def test_only_the_watch_is_scheduled_every_30_minutes_with_valid_crons() -> None:
    deployments = _deployments()
    for dep in deployments.values():
        for sched in dep.get("schedules") or []:
            cron_expand(sched["cron"])  # raises if not a valid 5-field cron
    (sched,) = deployments["rainfall-watch"]["schedules"]
    minutes, hours, dom, month, dow = cron_expand(sched["cron"])
    assert minutes == {0, 30} and hours == set(range(24)) and dom == set(range(1, 32))
    assert not deployments["regional-run"].get("schedules") and not deployments["train"].get("schedules")
    params = deployments["rainfall-watch"]["parameters"]
    assert (REPO / params["watchlist"]).is_file() and params["hours"] > 0


def test_cron_against_croniter_when_installed() -> None:
    croniter = pytest.importorskip("croniter", reason="croniter not installed; the built-in checker covers it")
    for dep in _deployments().values():
        for sched in dep.get("schedules") or []:
            assert croniter.croniter.is_valid(sched["cron"])


def test_deployment_job_variables_are_declared_by_the_k8s_base_job_template() -> None:
    template = _job_template()
    declared = set(template["variables"]["properties"])
    text = json.dumps(template["job_configuration"])
    used = set(re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", text))
    assert used <= declared, f"placeholders without a variable: {used - declared}"
    manifest = template["job_configuration"]["job_manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["args"] == "{{ command }}" and container["image"] == "{{ image }}"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu }}"
    for name, dep in _deployments().items():
        if dep["work_pool"]["name"] == "slidewatch-k8s":
            unknown = set(dep["work_pool"].get("job_variables", {})) - declared
            assert not unknown, f"{name}: job variables {unknown} are not in the base job template"


def entrypoint_problems(flows_file: Path, deployments: dict[str, dict]) -> list[str]:
    """Deployments whose entrypoint function is missing from ``flows_file`` or does not
    take one of the deployment's parameters (read with ``ast``: prefect is not imported)."""
    tree = ast.parse(flows_file.read_text())
    funcs = {n.name: n.args for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    problems = []
    for name, dep in deployments.items():
        func = dep["entrypoint"].split(":")[1]
        if func not in funcs:
            problems.append(f"{name}: {func} is not defined in {flows_file.name}")
            continue
        args = funcs[func]
        if args.kwarg is not None:
            continue
        accepted = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
        unknown = sorted(set(dep.get("parameters") or {}) - accepted)
        if unknown:
            problems.append(f"{name}: {func} takes no parameter(s) {unknown}")
    return problems


def test_entrypoint_checker_finds_missing_functions_and_parameters(tmp_path: Path) -> None:
    flows = tmp_path / "prefect_flows.py"
    flows.write_text(
        "from prefect import flow\n\n"
        "@flow\ndef rainfall_watch_flow(watchlist: str, hours: int = 72) -> None: ...\n\n"
        "@flow\nasync def regional_run_flow(region: str, *, out: str = 'out') -> None: ...\n\n"
        "@flow\ndef train_flow(**options) -> None: ...\n"
    )
    assert entrypoint_problems(flows, _deployments()) == []
    flows.write_text("def rainfall_watch_flow(watchlist): ...\ndef regional_run_flow(out): ...\n")
    problems = entrypoint_problems(flows, _deployments())
    assert any("hours" in p for p in problems) and any("train_flow is not defined" in p for p in problems)


def test_deployment_entrypoints_exist_and_take_the_given_parameters() -> None:
    if not PREFECT_FLOWS.is_file():
        pytest.skip("flows/prefect_flows.py is not written yet (another helper's file); "
                    "entrypoint and parameter names are checked once it exists")
    assert entrypoint_problems(PREFECT_FLOWS, _deployments()) == []


# ----------------------------------------------------------------------------- images

DOCKER = INFRA / "docker"


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _torch_pin() -> str:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ml"]
    (pin,) = [e for e in extras if e.replace(" ", "").startswith("torch==")]
    return pin.replace(" ", "")


@pytest.mark.parametrize("flavour", ["cpu", "cuda"])
def test_dockerfile_has_from_entrypoint_non_root_user_and_the_torch_pin(flavour: str) -> None:
    path = DOCKER / f"Dockerfile.{flavour}"
    ins = _instructions(path)
    words = [w for w, _ in ins]
    assert set(words[: words.index("FROM")]) <= {"ARG"}, "only ARGs may precede FROM"
    (entry,) = [json.loads(r) for w, r in ins if w == "ENTRYPOINT"]
    assert entry[-1] == "/usr/local/bin/slidewatch-entrypoint"
    users = [r for w, r in ins if w == "USER"]
    assert users and users[-1] not in {"root", "0"}
    runs = " ".join(r for w, r in ins if w == "RUN")
    assert "torch==2.13.0" in runs and _torch_pin() == "torch==2.13.0"
    index = re.search(r"--index-url\s+(\S+)\s+torch==", runs)
    assert index, "torch must come from an explicit wheel index"
    args = {r.split("=")[0]: r.split("=", 1)[1] for w, r in ins if w == "ARG" and "=" in r}
    url = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], index.group(1))
    assert url.endswith("/cpu") if flavour == "cpu" else re.search(r"/cu\d+$", url), url
    assert 'pip install ".[ml]"' in runs


@pytest.mark.parametrize("flavour", ["cpu", "cuda"])
def test_dockerfile_bakes_no_secret_and_copies_only_what_the_context_admits(flavour: str) -> None:
    path = DOCKER / f"Dockerfile.{flavour}"
    ins = _instructions(path)
    for word, rest in ins:
        if word in {"ENV", "ARG"}:
            assert "PC_SDK_SUBSCRIPTION_KEY" not in rest and "PREFECT_API_KEY" not in rest
    allowed = [ln[1:].rstrip("/") for ln in (DOCKER / f"Dockerfile.{flavour}.dockerignore").read_text().splitlines()
               if ln.startswith("!")]
    for word, rest in ins:
        if word != "COPY" or "--from" in rest:
            continue
        *sources, _dest = rest.split()
        for src in sources:
            assert (REPO / src).exists(), f"{path.name}: COPY source {src} does not exist"
            assert any(src.rstrip("/") == a or src.startswith(a + "/") for a in allowed), \
                f"{path.name}: {src} is excluded by the .dockerignore"
    # setuptools reads the readme named in pyproject.toml while building the wheel
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in allowed


def test_job_pods_run_as_the_images_non_root_user() -> None:
    spec = _job_template()["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    uid = spec["securityContext"]["runAsUser"]
    for flavour in ("cpu", "cuda"):
        runs = " ".join(r for w, r in _instructions(DOCKER / f"Dockerfile.{flavour}") if w == "RUN")
        assert re.search(rf"useradd .*--uid {uid}\b", runs), f"Dockerfile.{flavour} does not create uid {uid}"


def test_entrypoint_runs_slidewatch_commands_and_other_programs(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for prog in ("slidewatch", "dask", "watch"):
        stub = bin_dir / prog
        stub.write_text(f'#!/bin/sh\necho "{prog} $*"\n')
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}

    def run(*args: str) -> str:
        res = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), *args], env=env,
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    assert run() == "slidewatch --help"
    assert run("run", "--region", "hongya") == "slidewatch run --region hongya"
    assert run("--version") == "slidewatch --version"
    assert run("watch", "--once") == "slidewatch watch --once"  # not procps' `watch`
    assert run("dask", "worker", "tcp://s:8786") == "dask worker tcp://s:8786"
    assert run("no-such-program") == "slidewatch no-such-program"


# ----------------------------------------------------------------------------- watch list


def test_watch_list_example_has_the_agreed_shape_and_parseable_regions() -> None:
    doc = yaml.safe_load((INFRA / "watchlist.example.yaml").read_text())
    assert set(doc) == {"regions"}
    names = [r["name"] for r in doc["regions"]]
    assert len(names) == len(set(names)) >= 2
    with_threshold = 0
    for entry in doc["regions"]:
        assert set(entry) <= {"name", "region", "threshold"}
        parse_region(str(entry["region"]))  # raises RegionError if --region would reject it
        if "threshold" in entry:
            with_threshold += 1
            t = entry["threshold"]
            assert set(t) == {"a", "b"} and t["a"] > 0 and 0 < t["b"] < 1
    assert 0 < with_threshold < len(names), "show both a default and an explicit threshold"


# ----------------------------------------------------------------------------- docs/scaling.md

SCALING_MD = REPO / "docs" / "scaling.md"
BEGIN, END = "<!-- scaling_estimates.py output: begin -->", "<!-- scaling_estimates.py output: end -->"


def _table(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| ([^|]*?) \|", text, re.M)}


@pytest.fixture(scope="module")
def estimates_output() -> str:
    res = subprocess.run([sys.executable, str(REPO / "docs" / "scaling_estimates.py")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.slow
def test_scaling_doc_embeds_the_script_output_verbatim(estimates_output: str) -> None:
    doc = SCALING_MD.read_text()
    block = doc.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == estimates_output, "docs/scaling.md is stale: paste `python docs/scaling_estimates.py` between the markers"


@pytest.mark.slow
def test_scaling_doc_numbers_in_the_text_match_their_keys(estimates_output: str) -> None:
    table = _table(estimates_output)
    doc = SCALING_MD.read_text()
    prose = doc.split(BEGIN)[0] + doc.split(END)[1]
    # the convention: a quoted figure is followed right away by its key, "14 (`cube_core_h`)"
    refs = re.findall(r"(?<![\w.,-])([0-9][0-9,]*(?:\.[0-9]+)?)\s+\(`(\w+)`\)", prose)
    assert len(refs) >= 20, refs
    for number, key in refs:
        assert key in table, f"the text cites unknown key {key}"
        assert number == table[key], f"the text says {number} for {key}, the script prints {table[key]}"
    assert not set(re.findall(r"\(`(\w+)`\)", prose)) - {k for _, k in refs}, "a key cited without its number"


@pytest.mark.slow
def test_scaling_estimates_agree_with_hand_arithmetic(estimates_output: str) -> None:
    t = {k: float(v.replace(",", "")) for k, v in _table(estimates_output).items()}
    assert t["region_area_km2"] == pytest.approx(316.2**2, rel=2e-3)  # a 316.2 km square
    assert t["chunks"] * 512**2 / 1e6 == pytest.approx(t["grid_mpx"], abs=0.5)
    assert t["write_tiles"] >= t["chunks"] / 4
    assert t["s2_items"] % 13 == 0  # 62 days every 5 days: 13 dates × tiles
    assert t["s1_history_items"] % 21 == 0  # 242 days every 12 days: 21 dates × tiles
    assert t["bytes_total_tb"] == pytest.approx(t["bytes_s2_tb"] + t["bytes_s1_tb"] + t["bytes_dem_gb"] / 1000, abs=0.011)
    assert t["lsi_stage_tasks"] == 33 * t["chunks"] and t["lsi_tasks"] == 7 * t["chunks"]
    # 30.3 chips/s × 128² px on 2 cores, 1.5× halo
    assert t["unet_cpu_core_h_low"] == pytest.approx(t["grid_mpx"] * 1e6 * 1.5 / (30.3 * 128**2 / 2) / 3600, abs=0.05)
    assert t["unet_gpu_h_paper_high"] == pytest.approx(t["grid_mpx"] * 1e6 * 2.0 / (21.66 * 128**2) / 3600, abs=0.05)


def test_scaling_script_uses_the_runs_tile_size() -> None:
    m = re.search(r"^CHUNKS_PER_TILE\s*=\s*(\d+)", (REPO / "pipeline" / "core" / "config.py").read_text(), re.M)
    assert m is not None, "pipeline/core/config.py defines CHUNKS_PER_TILE"
    script = (REPO / "docs" / "scaling_estimates.py").read_text()
    assert re.search(rf"^CHUNKS_PER_TILE = {m.group(1)}$", script, re.M)
