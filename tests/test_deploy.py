"""The production stack, checked without Docker: docker-compose.temporal.yml, the Dockerfile and deploy/.

No engine runs these files here, so each is held against what it names: the Compose specification, the
app's settings, CLI and metrics, the Temporal SDK's metric names, and the other files (a scrape target
is a service listening on that port, a mounted path exists in the repository, a panel's data source is
the provisioned one). Fast and offline.
"""

from __future__ import annotations

import base64
import fnmatch
import importlib.resources
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import typer
import yaml
from jsonschema import validators
from prometheus_client import REGISTRY
from typer.testing import CliRunner

import dialogue.platform.metrics
from dialogue.apps.cli import app as cli_app
from dialogue.platform import telemetry
from dialogue.platform.settings import Settings
from dialogue.platform.temporal import search_attribute_flags

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.temporal.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
IMAGE_WORKDIR = PurePosixPath("/app")

# What an operator's .env would hold; only the shapes matter.
SAMPLE_ENV = {
    "DIALOGUE_API_KEY": "dk_sample",
    "DIALOGUE_PAYLOAD_KEYS": "k1:" + base64.b64encode(bytes(32)).decode(),
    "APP_POSTGRES_PASSWORD": "apppassword",
    "TEMPORAL_POSTGRES_PASSWORD": "temporalpassword",
    "GRAFANA_ADMIN_PASSWORD": "grafanapassword",
}

# The Temporal SDK's worker metrics that alerts and the dashboard may use, as the worker exports them:
# names from the SDK metrics reference (docs.temporal.io/references/sdk-metrics) with the `temporal_`
# prefix and, because dialogue.platform.telemetry.sdk_runtime keeps the exporter's defaults
# (test_worker_exports_sdk_metrics_under_their_plain_names), no `_total` on counters and no unit suffix
# on histograms, whose values are seconds (durations_as_seconds). Read off a worker's /metrics with
# temporalio 1.35, except the `*_failed`/`*_failure` counters, which appear only once something fails.
SDK_COUNTERS = {
    "temporal_workflow_task_execution_failed",
    "temporal_activity_execution_failed",
    "temporal_request",
    "temporal_request_failure",
}
SDK_GAUGES = {
    "temporal_worker_task_slots_available",
    "temporal_worker_task_slots_used",
    "temporal_num_pollers",
    "temporal_sticky_cache_size",
}
SDK_HISTOGRAMS = {
    "temporal_workflow_task_schedule_to_start_latency",
    "temporal_workflow_task_execution_latency",
    "temporal_activity_schedule_to_start_latency",
    "temporal_activity_execution_latency",
    "temporal_request_latency",
    # Recorded by ConversationWorkflow through the SDK's replay-safe meter, so exported beside these.
    dialogue.platform.metrics.TURN_QUEUE_DEPTH,
}

PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}


# --- reading the files ---------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`,
    `${VAR?error}`, and `$$` for a literal dollar."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2) or "", match.group(3) or ""
        present = name in env and (env[name] != "" or ":" not in operator)
        if operator.endswith("?") and not present:
            raise KeyError(f"{name}: {argument}")
        if operator.endswith("-") and not present:
            return argument
        return env.get(name, "")

    expanded = re.sub(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}", substitute, value.replace("$$", "\0"))
    return expanded.replace("\0", "$")


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(str(value), SAMPLE_ENV) for key, value in raw.items()}


def command(service: dict[str, Any]) -> list[str]:
    value = service.get("command") or []
    return value.split() if isinstance(value, str) else [str(part) for part in value]


def app_services() -> dict[str, dict[str, Any]]:
    """The services that run the `dialogue` CLI from the Dockerfile's image."""
    return {name: s for name, s in services().items() if command(s)[:1] == ["dialogue"]}


def settings_of(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the service's process would read: its environment over the image's."""
    for name in [name for name in os.environ if name.startswith("DIALOGUE_")]:
        monkeypatch.delenv(name)
    for name, value in {**dockerfile_env(), **environment(service)}.items():
        if name.startswith("DIALOGUE_"):
            monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def is_one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart", "no") == "no"


def bind_mounts(service: dict[str, Any]) -> Iterator[tuple[Path, PurePosixPath]]:
    for volume in service.get("volumes") or []:
        source, target = (
            (volume.split(":")[:2]) if isinstance(volume, str) else (volume["source"], volume["target"])
        )
        if source.startswith("."):
            yield (ROOT / source).resolve(), PurePosixPath(target)


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository file a bind mount puts at `container_path`, or None when nothing mounts it."""
    path = PurePosixPath(container_path)
    for source, target in bind_mounts(service):
        if path == target or target in path.parents:
            return source / path.relative_to(target)
    return None


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            env.update(dict(pair.split("=", 1) for pair in rest.split()))
    return env


def image_path(path: str) -> Path:
    """The repository file the image holds at `path` (the Dockerfile copies the tree under /app)."""
    return ROOT / PurePosixPath(path).relative_to(IMAGE_WORKDIR)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers left once strings, label matchers, ranges and
    `by (...)`-style label lists are removed, that are neither functions nor keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = re.findall(r"(?<![\w.$:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
    return {name for name in names if name not in PROMQL_WORDS}


def exported_metric_names() -> set[str]:
    """Every series name the API and the worker can expose, from prometheus-client's registry (the
    app's metrics, the process collector's) and the SDK's, plus Prometheus's own `up`."""
    names = {"up"}
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type in ("histogram", "summary"):
            names |= {f"{family.name}_{part}" for part in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    names |= SDK_COUNTERS | SDK_GAUGES
    names |= {f"{name}_{part}" for name in SDK_HISTOGRAMS for part in ("bucket", "sum", "count")}
    return names


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GRAFANA_DIR / "dashboards" / "dialogue.json").read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def all_promql() -> list[tuple[str, str]]:
    exprs = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    for panel in dashboard_panels():
        exprs += [(f"panel {panel['title']!r}", target["expr"]) for target in panel["targets"]]
    return exprs


def prometheus_config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    return loaded


def scrape_targets() -> dict[str, list[tuple[str, int]]]:
    targets: dict[str, list[tuple[str, int]]] = {}
    for job in prometheus_config()["scrape_configs"]:
        found = targets.setdefault(job["job_name"], [])
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                found.append((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            found += [(name, int(dns["port"])) for name in dns["names"]]
    return targets


def published_port(service: dict[str, Any], container_port: int) -> int:
    for mapping in service.get("ports") or []:
        *_, host, target = f"::{mapping}".split(":")
        if int(target) == container_port:
            return int(host)
    raise AssertionError(f"port {container_port} is not published")


def cli_leaf(argv: list[str]) -> list[str]:
    """The path of the `dialogue` subcommand `argv` runs; fails on an unknown command or option."""
    assert argv[0] == "dialogue", argv
    # Typer ships its own click, so groups are told by their `commands`, not by class.
    node: Any = typer.main.get_command(cli_app)
    path: list[str] = []
    rest = argv[1:]
    while hasattr(node, "commands"):
        assert rest, f"{' '.join(argv)}: names a command group, not a command"
        name, rest = rest[0], rest[1:]
        assert name in node.commands, f"{' '.join(argv)}: `dialogue {' '.join([*path, name])}` does not exist"
        node, path = node.commands[name], [*path, name]
    options = {opt for param in node.params for opt in (*param.opts, *param.secondary_opts)}
    for arg in rest:
        if arg.startswith("--"):
            assert arg.split("=")[0] in options, f"{' '.join(argv)}: no option {arg}"
    return path


# --- the compose file ----------------------------------------------------------------------------


def compose_validator() -> Any:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator_class = validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def test_compose_file_follows_the_compose_specification() -> None:
    validator = compose_validator()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []
    # The schema does reject mistakes: a misspelt key fails.
    broken = {"services": {"api": {"image": "x:1", "helthcheck": {"test": ["CMD", "true"]}}}}
    assert list(validator.iter_errors(broken))


def test_every_image_is_pinned() -> None:
    for name, service in services().items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned to a version"
        assert "$" not in image, f"{name}: {image} depends on the environment"
    base_images = [rest.split()[0] for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    assert base_images and all(":" in image and not image.endswith(":latest") for image in base_images)


def test_dependencies_name_services_that_can_satisfy_them() -> None:
    for name, service in services().items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services(), f"{name} depends on {dependency}, which is not a service"
            target = services()[dependency]
            if condition == "service_healthy":
                assert "healthcheck" in target and not target["healthcheck"].get("disable"), (
                    f"{name} waits for {dependency} to be healthy, which has no health check"
                )
            elif condition == "service_completed_successfully":
                assert is_one_shot(target), f"{name} waits for {dependency} to finish, which restarts"
            else:
                assert condition == "service_started", f"{name}: unknown condition {condition}"


def test_every_long_running_service_has_a_health_check() -> None:
    for name, service in services().items():
        if is_one_shot(service):
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} runs for good but has no health check"


def test_the_app_waits_for_its_schema_and_for_temporal() -> None:
    for name in ("api", "worker"):
        conditions = depends_on(services()[name])
        assert conditions["migrate"] == "service_completed_successfully"
        assert conditions["temporal"] == "service_healthy"
        assert conditions["temporal-setup"] == "service_completed_successfully"


def test_secrets_come_from_the_environment_and_are_documented() -> None:
    header = COMPOSE_FILE.read_text().split("\nname:")[0]
    raw = COMPOSE_FILE.read_text()
    for variable in set(re.findall(r"\$\{(\w+)", raw)):
        assert variable in header, f"${{{variable}}} is not documented at the top of the compose file"
    for variable in SAMPLE_ENV:
        assert f"${{{variable}:?" in raw, f"{variable} must be required (${{{variable}:?...}})"
    secret = re.compile(r"PASSWORD|PWD|SECRET|API_KEY|PAYLOAD_KEYS")
    for name, service in services().items():
        for key, value in (service.get("environment") or {}).items():
            if secret.search(key):
                assert "${" in str(value), f"{name}: {key} is written into the compose file"
    # Nothing starts with a secret missing.
    with pytest.raises(KeyError, match="DIALOGUE_API_KEY"):
        interpolate(services()["api"]["environment"]["DIALOGUE_API_KEY"], {})


def test_app_services_set_only_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = set(Settings.model_fields)
    image_env = {name for name in dockerfile_env() if name.startswith("DIALOGUE_")}
    for name, service in app_services().items():
        variables = {key for key in environment(service) if key.startswith("DIALOGUE_")} | image_env
        unknown = {v for v in variables if v.removeprefix("DIALOGUE_").lower() not in fields}
        assert not unknown, f"{name} sets {sorted(unknown)}, which no setting reads"
        settings = settings_of(service, monkeypatch)
        assert settings.environment == "production"
        assert settings.resolved_database_url.startswith("postgresql+psycopg://")
        assert settings.temporal_address == "temporal:7233"
        assert settings.payload_codec_keys() is not None
        assert settings.retrieval == "lexical", "the image has no embeddings extra"
        assert settings.knowledge_index == "store", "workers search PostgreSQL's full text, holding no corpus"


def test_app_commands_are_real_cli_commands() -> None:
    argvs = [command(service) for service in app_services().values()]
    for keyword, rest in dockerfile_instructions():
        argv = json.loads(rest) if rest.startswith("[") else rest.split()
        if keyword in ("RUN", "CMD") and argv[:1] == ["dialogue"]:
            argvs.append(argv)
    assert {tuple(cli_leaf(argv)) for argv in argvs} >= {("api",), ("worker",), ("db", "upgrade")}
    runner = CliRunner()
    for argv in argvs:
        path = cli_leaf(argv)
        result = runner.invoke(cli_app, [*path, "--help"])
        assert result.exit_code == 0, result.output


def test_app_services_listen_where_the_others_look(monkeypatch: pytest.MonkeyPatch) -> None:
    api = settings_of(services()["api"], monkeypatch)
    assert api.api_host == "0.0.0.0"
    assert str(api.api_port) in " ".join(services()["api"]["healthcheck"]["test"])
    worker = settings_of(services()["worker"], monkeypatch)
    assert worker.worker_metrics_host == "0.0.0.0" and worker.worker_metrics_port
    assert str(worker.worker_metrics_port) in " ".join(services()["worker"]["healthcheck"]["test"])
    # The Web UI's browser calls the API's codec endpoint, which lets the UI's origins in.
    ui = services()["temporal-ui"]
    ui_env = environment(ui)
    api_port = published_port(services()["api"], api.api_port)
    assert ui_env["TEMPORAL_CODEC_ENDPOINT"] == f"http://localhost:{api_port}/codec"
    ui_port = published_port(ui, int(ui_env["TEMPORAL_UI_PORT"]))
    assert f"http://localhost:{ui_port}" in (api.codec_ui_origins or [])


def test_namespace_setup_registers_the_search_attributes_the_workflows_write() -> None:
    script = (ROOT / "deploy" / "temporal" / "setup-namespace.sh").read_text()
    registered = re.findall(r"^add (\w+) (\w+)$", script, flags=re.MULTILINE)
    flags = search_attribute_flags()
    expected = [tuple(value.split("=")) for value in flags[1::2]]
    assert sorted(registered) == sorted(expected)


def test_files_the_containers_read_are_mounted_from_the_repository() -> None:
    wanted = {
        "temporal-schema": command(services()["temporal-schema"]),
        "temporal-setup": command(services()["temporal-setup"]),
        "temporal": [environment(services()["temporal"])["DYNAMIC_CONFIG_FILE_PATH"]],
        "prometheus": [
            arg.split("=", 1)[1]
            for arg in command(services()["prometheus"])
            if arg.startswith("--config.file=")
        ],
        "grafana": [environment(services()["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]],
    }
    for name, paths in wanted.items():
        assert paths, name
        for container_path in paths:
            source = host_path(services()[name], container_path)
            assert source is not None and source.is_file(), f"{name}: nothing mounts {container_path}"
    prometheus = services()["prometheus"]
    for rule_file in prometheus_config()["rule_files"]:
        source = host_path(prometheus, rule_file)
        assert source is not None and source.is_file(), rule_file
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "dialogue.yml").read_text())
    for provider in providers["providers"]:
        source = host_path(services()["grafana"], provider["options"]["path"])
        assert source is not None and list(source.glob("*.json")), provider["options"]["path"]
    assert host_path(services()["grafana"], "/etc/grafana/provisioning/datasources/prometheus.yml")
    for source, _ in (mount for service in services().values() for mount in bind_mounts(service)):
        assert source.exists(), source


# --- Prometheus and Grafana ----------------------------------------------------------------------


def listening_ports(name: str, monkeypatch: pytest.MonkeyPatch) -> set[int]:
    service = services()[name]
    if name in app_services():
        settings = settings_of(service, monkeypatch)
        role = command(service)[1]
        return {settings.api_port} if role == "api" else {settings.worker_metrics_port}
    endpoint = environment(service).get("PROMETHEUS_ENDPOINT", "")
    return {int(endpoint.rpartition(":")[2])} if endpoint else set()


def test_prometheus_scrapes_services_on_ports_they_listen_on(monkeypatch: pytest.MonkeyPatch) -> None:
    targets = scrape_targets()
    assert {"dialogue-api", "dialogue-worker"} <= set(targets)
    for job, found in targets.items():
        assert found, job
        for host, port in found:
            assert host in services(), f"{job}: {host} is not a compose service"
            assert port in listening_ports(host, monkeypatch), f"{job}: {host} does not listen on {port}"


def test_jobs_named_in_alerts_and_panels_are_scraped() -> None:
    jobs = set(scrape_targets())
    for where, expr in all_promql():
        for selector in re.findall(r'job=~?"([^"]+)"', expr):
            named = set(selector.split("|"))
            assert named <= jobs, f"{where}: no scrape job {sorted(named - jobs)}"


def test_promql_metric_names_are_found() -> None:
    expr = (
        'sum by (le) (rate(a_bucket{x="y", job=~"b|c"}[5m])) / on(i) b_total > 1e-3 or absent(c) and up == 0'
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "c", "up"}


def test_alerts_and_dashboard_use_metrics_that_exist() -> None:
    exported = exported_metric_names()
    assert "dialogue_turns_total" in exported and "process_cpu_seconds_total" in exported
    for where, expr in all_promql():
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= exported, f"{where}: {sorted(names - exported)} is not exported by anything scraped"


def test_worker_exports_sdk_metrics_under_their_plain_names(monkeypatch: pytest.MonkeyPatch) -> None:
    configs: list[Any] = []

    class RecordingRuntime:
        def __init__(self, *, telemetry: Any) -> None:
            configs.append(telemetry.metrics)

    monkeypatch.setattr(telemetry, "Runtime", RecordingRuntime)
    telemetry.sdk_runtime()
    (metrics,) = configs
    assert metrics.durations_as_seconds
    assert not metrics.counters_total_suffix and not metrics.unit_suffix


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["for"], rule["alert"]


def test_dashboard_panels_query_the_provisioned_data_source() -> None:
    provisioned = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (source,) = provisioned["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "prometheus" in services()
    board = dashboard()
    assert board["uid"] and board["title"]
    panels = dashboard_panels()
    assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"])
    for panel in panels:
        expected = {"type": source["type"], "uid": source["uid"]}
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", expected) == expected and target["expr"], panel["title"]


# --- the image -----------------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerfile_copies_files_that_exist_and_are_in_the_context() -> None:
    ignored = dockerignore_patterns()
    assert ".env" in ignored, "secrets must stay out of the build context"
    sources = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in rest:
            args = [arg for arg in rest.split() if not arg.startswith("--")]
            sources += args[:-1]
    assert sources
    for source in sources:
        matches = list(ROOT.glob(source))
        assert matches, f"COPY {source}: not in the repository"
        for pattern in ignored:
            assert not fnmatch.fnmatch(source, pattern.removeprefix("**/")), (
                f"COPY {source}: .dockerignore drops it"
            )


def test_image_settings_point_at_files_the_image_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    env = dockerfile_env()
    assert image_path(env["DIALOGUE_BOT_PATH"]).is_file()
    (train,) = [
        rest for keyword, rest in dockerfile_instructions() if keyword == "RUN" and "nlu train" in rest
    ]
    args = train.split()
    assert image_path(str(IMAGE_WORKDIR / args[args.index("--data") + 1])).is_file()
    assert str(IMAGE_WORKDIR / args[args.index("--out") + 1]) == env["DIALOGUE_NLU_MODEL_DIR"]
    # The knowledge the kb-ingest job loads is the folder the image copies.
    ingest = command(services()["kb-ingest"])
    assert image_path(ingest[-1]).is_dir()
    settings = settings_of(services()["worker"], monkeypatch)
    assert settings.nlu_backend == "trained"


def packaging() -> tuple[list[str], list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = config["packages"]["find"]["include"]
    package_data = config["package-data"]["*"]
    return include, package_data


def shipped_sources() -> list[Path]:
    include, _ = packaging()
    tops = {pattern.rstrip("*") for pattern in include}
    files = [ROOT / "worker.py"]
    for top in sorted(tops):
        files += [p for p in (ROOT / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return files


def test_every_module_and_data_file_is_packaged() -> None:
    """The image installs the wheel, not the source tree: a module or data file that setuptools does
    not pick up is missing in production only."""
    _, package_data = packaging()
    for path in shipped_sources():
        relative = path.relative_to(ROOT)
        if path.suffix == ".py":
            if path.parent != ROOT:
                assert (path.parent / "__init__.py").is_file(), f"{relative}: its folder is not a package"
        else:
            assert any(fnmatch.fnmatch(path.name, pattern) for pattern in package_data), (
                f"{relative}: not matched by [tool.setuptools.package-data]"
            )


def test_the_wheel_holds_every_shipped_file(tmp_path: Path) -> None:
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("building offline needs setuptools>=77 (pyproject.toml's build requirement) installed")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (source / name).write_bytes((ROOT / name).read_bytes())
    for path in shipped_sources():
        target = source / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp_path / "wheel"),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(path.relative_to(ROOT)) for path in shipped_sources()}
    assert expected - packaged == set()
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in packaged if n.endswith("entry_points.txt")))
    assert b"dialogue = dialogue.__main__:main" in entry_points
