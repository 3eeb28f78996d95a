"""deploy/ cannot drift from the code: every file parses, names only real settings, gives each
role what it needs, and agrees with the code's ports, metric names and routes.

Static checks only (plus one loopback HTTP server for the image's health check): no network, no
Docker, no cluster.
"""

from __future__ import annotations

import configparser
import functools
import importlib.util
import json
import re
import shlex
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from sesflow.cli.embedded import free_port
from sesflow.common.errors import ConfigError
from sesflow.common.settings import Settings, check_role, env_names, settings_from_mapping

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"

ROLES = ("ingest", "sender", "tracker", "stats")
DEFAULTS = Settings()
ROLE_PORTS = {
    "ingest": DEFAULTS.ingest_port,
    "tracker": DEFAULTS.tracker_port,
    "stats": DEFAULTS.stats_port,
    "sender": DEFAULTS.sender_metrics_port,
}
PORT_SETTINGS = {
    "ingest": "INGEST_PORT",
    "tracker": "TRACKER_PORT",
    "stats": "STATS_PORT",
    "sender": "SENDER_METRICS_PORT",
}

SETTING_NAMES = {name for field in Settings.__struct_fields__ for name in env_names(field)}
# Variables read by botocore or Python itself rather than by sesflow's settings.
STANDARD_ENV = {
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_CA_BUNDLE",
    "PATH",
    "TZ",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONFAULTHANDLER",
}
KNOWN_ENV = SETTING_NAMES | STANDARD_ENV

# Every role needs Redis; a sender also needs the identity it sends from and the public URL its
# tracking links point at.
REQUIRED_ENV = {
    "ingest": {"REDIS_URL"},
    "tracker": {"REDIS_URL"},
    "stats": {"REDIS_URL"},
    "sender": {"REDIS_URL", "EMAIL_SENDER", "SERVER_URL"},
}

# The Prometheus metric names sesflow's roles serve (histograms add _bucket/_sum/_count).
METRICS = {
    "sesflow_stream_length",
    "sesflow_stream_pending",
    "sesflow_stream_lag",
    "sesflow_backlog",
    "sesflow_dead_letters",
    "sesflow_rate_tokens",
    "sesflow_rate_effective_per_second",
    "sesflow_rate_configured_per_second",
    "sesflow_sends_total",
    "sesflow_ses_call_seconds",
    "sesflow_ses_errors_total",
    "sesflow_events_total",
    "sesflow_redis_reconnects_total",
    "sesflow_http_requests_total",
    "sesflow_webhook_deliveries_total",
    "sesflow_webhook_delivery_seconds",
    "sesflow_webhook_backlog",
}
HISTOGRAMS = {"sesflow_ses_call_seconds", "sesflow_webhook_delivery_seconds"}

# (method, path, role serving it): every compatibility route (the older services' paths), plus
# sesflow's own.
COMPAT_ROUTES = [
    ("POST", "/v1/messages", "ingest"),
    ("DELETE", "/v1/topics/newsletter_2024_01", "ingest"),
    ("GET", "/v1/topics/newsletter_2024_01", "stats"),
    ("POST", "/v1/events/results", "tracker"),
    ("POST", "/v1/events/result", "tracker"),
    ("GET", "/v1/events/open", "tracker"),
    ("GET", "/v1/events/click", "tracker"),
    ("POST", "/v1/events/unsubscribe", "tracker"),
    ("GET", "/v1/events/counts/sent", "stats"),
    ("GET", "/v1/results/count/plan-1", "stats"),
    ("GET", "/v1/results/sent", "stats"),
    ("GET", "/v1/stats/series", "stats"),
    ("GET", "/", "stats"),
    ("GET", "/v1/suppressions", "ingest"),
    ("PUT", "/v1/suppressions/a@example.com", "ingest"),
]


# --- loading ----------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@functools.cache  # read-only use; parsing every manifest per routed path is slow
def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return docs


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d["kind"] == kind]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(DEPLOY / "docker-compose.yml")
    return data


def compose_roles() -> dict[str, dict[str, Any]]:
    """Compose services that run a sesflow role, by role."""
    roles: dict[str, dict[str, Any]] = {}
    for service in compose()["services"].values():
        if str(service.get("image", "")).startswith("sesflow"):
            verb, role = service["command"]
            assert verb == "serve", service["command"]
            roles[role] = service
    return roles


def as_env_dict(env: Any) -> dict[str, str]:
    """Compose `environment:` as a mapping or as a list of KEY=VALUE."""
    if env is None:
        return {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def dotenv_keys(path: Path) -> set[str]:
    keys = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            keys.add(line.split("=", 1)[0].strip())
    return keys


def read_unit(path: Path) -> configparser.RawConfigParser:
    unit = configparser.RawConfigParser(strict=False, delimiters=("=",), comment_prefixes=("#",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(path, encoding="utf-8")
    return unit


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def runtime_stage() -> list[tuple[str, str]]:
    """The instructions of the final stage: the image that runs (the builder's ENV is pip's)."""
    instructions = dockerfile_instructions()
    last = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last:]


def port_of(url: str) -> int:
    match = re.search(r"://[^/:]+:(\d+)", url)
    assert match, url
    return int(match.group(1))


def exprs(dashboard: dict[str, Any]) -> Iterator[str]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]


# --- every file parses ------------------------------------------------------------------------


def test_every_deploy_file_is_known_and_parses() -> None:
    files = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*") if p.is_file()}
    expected = {
        "README.md",
        "Dockerfile",
        "Dockerfile.dockerignore",
        "healthcheck.py",
        "docker-compose.yml",
        "prometheus/prometheus.yml",
        "grafana/provisioning/datasources/sesflow.yml",
        "grafana/provisioning/dashboards/sesflow.yml",
        "grafana/dashboards/sesflow.json",
        "k8s/redis.md",
        "systemd/sesflow.target",
        *(f"systemd/sesflow-{r}.service" for r in ("ingest", "tracker", "stats")),
        "systemd/sesflow-sender@.service",
    }
    files = {f for f in files if "__pycache__" not in f}
    assert expected <= files
    for path in yaml_files():
        assert list(yaml.safe_load_all(path.read_text(encoding="utf-8"))), path
    for path in DEPLOY.rglob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))
    # Files embedded in ConfigMaps parse too.
    for doc in k8s_kind("ConfigMap"):
        for name, value in doc["data"].items():
            if name.endswith((".yml", ".yaml")):
                assert yaml.safe_load(value), name


# --- settings named in deploy files are real, and required ones are given ---------------------


def systemd_env_names() -> set[str]:
    names: set[str] = set()
    for path in SYSTEMD.glob("*.service"):
        unit = read_unit(path)
        for line in unit.get("Service", "Environment", fallback="").split():
            names.add(line.split("=", 1)[0])
        names |= set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", unit.get("Service", "ExecStart")))
    return names


def k8s_env_names() -> set[str]:
    names: set[str] = set()
    for doc in k8s_kind("ConfigMap"):
        if doc["metadata"]["name"] == "sesflow-config":
            names |= set(doc["data"])
    for doc in k8s_kind("Secret"):
        names |= set(doc.get("stringData", {})) | set(doc.get("data", {}))
    for doc in k8s_kind("Deployment"):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            names |= {e["name"] for e in container.get("env", [])}
    return names


def test_environment_variables_are_sesflow_settings() -> None:
    compose_env = {name for s in compose_roles().values() for name in as_env_dict(s["environment"])}
    docker_env = set()
    for word, args in runtime_stage():
        if word == "ENV":
            docker_env |= set(re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]*)=", args))
    for where, names in {
        "compose": compose_env,
        "k8s": k8s_env_names(),
        "systemd": systemd_env_names(),
        "Dockerfile": docker_env,
    }.items():
        assert names, where
        unknown = names - KNOWN_ENV
        assert not unknown, f"{where} names variables that are not settings: {unknown}"


def test_compose_gives_every_role_its_required_settings() -> None:
    services = compose_roles()
    assert set(services) == set(ROLES)
    # The env_file is the operator's copy of .env.example, which lists every setting.
    template = dotenv_keys(ROOT / ".env.example")
    for role, service in services.items():
        env = as_env_dict(service["environment"])
        env_files = service["env_file"]
        env_files = [env_files] if isinstance(env_files, str) else env_files
        assert [Path(str(f)).name for f in env_files] == [".env"]
        missing = REQUIRED_ENV[role] - set(env) - template
        assert not missing, f"compose {role} lacks {missing}"
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert env["BIND_HOST"] == "0.0.0.0"


def test_k8s_gives_every_role_its_required_settings() -> None:
    config = {d["metadata"]["name"]: d["data"] for d in k8s_kind("ConfigMap")}
    secrets = {d["metadata"]["name"]: d["stringData"] for d in k8s_kind("Secret")}
    for deployment in k8s_kind("Deployment"):
        role = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env: dict[str, str] = {e["name"]: e.get("value", "") for e in container.get("env", [])}
        for source in container["envFrom"]:
            if "configMapRef" in source:
                env.update(config[source["configMapRef"]["name"]])
            else:
                env.update(secrets[source["secretRef"]["name"]])
        missing = {name for name in REQUIRED_ENV[role] if not env.get(name)}
        assert not missing, f"k8s {role} lacks {missing}"
        assert env["BIND_HOST"] == "0.0.0.0"
        assert env.get("REDIS_CLUSTER", "0") in {"0", "1"}
        assert int(env.get("SEND_PARTITIONS", "1")) >= 1


def test_sns_topic_arns_is_required_for_the_tracker() -> None:
    """Without SNS_TOPIC_ARNS the tracker refuses all SNS feedback; a deployment must not come up
    that way by accident, nor with a placeholder that silently matches no topic."""
    compose_value = as_env_dict(compose_roles()["tracker"]["environment"])["SNS_TOPIC_ARNS"]
    assert re.fullmatch(r"\$\{SNS_TOPIC_ARNS:\?[^}]+\}", compose_value), compose_value

    (config,) = [d for d in k8s_kind("ConfigMap") if d["metadata"]["name"] == "sesflow-config"]
    placeholder = config["data"]["SNS_TOPIC_ARNS"]
    with pytest.raises(ConfigError, match="SNS_TOPIC_ARNS"):  # no role starts until it is set
        settings_from_mapping({"SNS_TOPIC_ARNS": placeholder})

    unit = read_unit(SYSTEMD / "sesflow-tracker.service")
    (argv,) = [shlex.split(line) for line in unit["Service"]["ExecStartPre"].splitlines()]
    argv = [arg.replace("$$", "$") for arg in argv]  # systemd's escape for a literal `$`
    unset = subprocess.run(argv, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert unset.returncode != 0 and "SNS_TOPIC_ARNS" in unset.stderr
    arn = "arn:aws:sns:us-east-1:123456789012:feedback"
    given = subprocess.run(argv, env={"PATH": "/usr/bin:/bin", "SNS_TOPIC_ARNS": arn}, check=False)
    assert given.returncode == 0


def test_secrets_are_in_the_secret_not_the_configmap() -> None:
    secret_names = {
        "REDIS_URL",
        "API_KEY",
        "JWT_SECRET",
        "TRACKING_SECRET",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "SENTRY_DSN",
    }
    (secret,) = k8s_kind("Secret")
    assert secret_names <= set(secret["stringData"])
    for doc in k8s_kind("ConfigMap"):
        assert not secret_names & set(doc["data"])


# --- secure by default -------------------------------------------------------------------------


def test_compose_publishes_ports_on_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_compose_requires_api_key_and_a_grafana_password() -> None:
    # `${NAME:?message}`: compose refuses to start while NAME is unset or empty.
    for role in ("ingest", "stats"):
        env = as_env_dict(compose_roles()[role]["environment"])
        assert env["BIND_HOST"] == "0.0.0.0"
        assert env["API_KEY"].startswith("${API_KEY:?"), role
    grafana = as_env_dict(compose()["services"]["grafana"]["environment"])
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert "GRAFANA_ADMIN_PASSWORD" in dotenv_keys(ROOT / ".env.example")
    # Grafana's stats datasource authenticates with the same key.
    assert grafana["SESFLOW_API_KEY"].startswith("${API_KEY:?")
    datasources = load_yaml(DEPLOY / "grafana/provisioning/datasources/sesflow.yml")
    (stats_api,) = [d for d in datasources["datasources"] if d["uid"] == "sesflow-stats-api"]
    assert stats_api["jsonData"]["httpHeaderName1"] == "x-api-key"
    assert stats_api["secureJsonData"]["httpHeaderValue1"] == "${SESFLOW_API_KEY}"


def k8s_role_env(role: str) -> dict[str, str]:
    config = {d["metadata"]["name"]: d["data"] for d in k8s_kind("ConfigMap")}
    secrets = {d["metadata"]["name"]: d["stringData"] for d in k8s_kind("Secret")}
    (deployment,) = [
        d
        for d in k8s_kind("Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == role
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        if "configMapRef" in source:
            env.update(config[source["configMapRef"]["name"]])
        else:
            env.update(secrets[source["secretRef"]["name"]])
    env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    return env


@pytest.mark.parametrize("role", ROLES)
def test_k8s_placeholders_stop_every_role_with_a_message(role: str) -> None:
    """The Secret ships CHANGE_ME: a forgotten one must stop the pod, never be used."""
    env = k8s_role_env(role)
    assert env["TRACKING_SECRET"] == "CHANGE_ME"
    with pytest.raises(ConfigError, match="is the placeholder 'CHANGE_ME'"):
        settings_from_mapping(env)


def filled_in(name: str) -> str:
    """What an operator puts in place of a shipped CHANGE_ME."""
    if name == "SNS_TOPIC_ARNS":
        return "arn:aws:sns:eu-west-1:123456789012:ses-feedback"
    return "kq3v9Zr1xW8pL2mN7bT4"


@pytest.mark.parametrize("role", ("ingest", "stats"))
def test_k8s_api_roles_get_credentials(role: str) -> None:
    env = k8s_role_env(role)
    assert env["BIND_HOST"] == "0.0.0.0"
    assert env.get("API_KEY") or env.get("JWT_SECRET")
    assert env.get("ALLOW_UNAUTHENTICATED", "0") in {"", "0"}
    # Once the placeholders are replaced, the role starts.
    filled = {k: (filled_in(k) if v == "CHANGE_ME" else v) for k, v in env.items()}
    check_role(settings_from_mapping(filled), role)


# --- ports agree with the code ---------------------------------------------------------------


def test_compose_ports_and_healthchecks_match_the_code() -> None:
    for role, service in compose_roles().items():
        port = ROLE_PORTS[role]
        env = as_env_dict(service["environment"])
        assert int(env[PORT_SETTINGS[role]]) == port
        check = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/health" in check
        published = [str(p).split(":")[-1] for p in service.get("ports", [])]
        exposed = [str(p) for p in service.get("expose", [])]
        assert str(port) in published + exposed
        # Longer than SHUTDOWN_GRACE, so in-flight SES calls are recorded.
        grace = service["stop_grace_period"]
        assert grace.endswith("s") and int(grace[:-1]) > DEFAULTS.shutdown_grace
    assert compose_roles()["sender"]["deploy"]["replicas"] == 3


def test_compose_redis_keeps_every_job() -> None:
    redis = compose()["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    for service in compose_roles().values():
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_prometheus_scrapes_every_role_on_its_port() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {f"sesflow-{role}" for role in ROLES}
    services = compose()["services"]
    for role in ROLES:
        job = jobs[f"sesflow-{role}"]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        if "static_configs" in job:
            targets = [t for sc in job["static_configs"] for t in sc["targets"]]
            assert targets == [f"{role}:{ROLE_PORTS[role]}"]
        else:
            (sd,) = job["dns_sd_configs"]
            assert sd["port"] == ROLE_PORTS[role]
            assert sd["names"] == [role]
        # Targets are compose service names: the service named after the role runs it.
        assert services[role]["command"] == ["serve", role]


def test_dockerfile_exposes_the_role_ports() -> None:
    exposed = {int(p) for w, a in dockerfile_instructions() if w == "EXPOSE" for p in a.split()}
    assert exposed == set(ROLE_PORTS.values())


def test_systemd_sender_replicas_get_consecutive_metrics_ports() -> None:
    exec_start = read_unit(SYSTEMD / "sesflow-sender@.service").get("Service", "ExecStart")
    argv = shlex.split(exec_start)
    assert argv[:2] == ["/bin/sh", "-c"]
    # What systemd hands the shell for instance 2: `$$` is a literal `$`, `%i` the instance.
    script = argv[2].replace("$$", "$").replace("%i", "2")
    assert script.endswith("exec /opt/sesflow/bin/sesflow serve sender")
    script = script.replace("/opt/sesflow/bin/sesflow serve sender", "printenv SENDER_METRICS_PORT")
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(DEFAULTS.sender_metrics_port + 2)
    env["SENDER_METRICS_PORT"] = "4000"  # a base port set in sesflow.env
    out = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "4002"


# --- Grafana ----------------------------------------------------------------------------------


def test_grafana_dashboard_uses_only_sesflow_metric_names() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/sesflow.json").read_text())
    used: set[str] = set()
    for expr in exprs(dashboard):
        for name in re.findall(r"\bsesflow_[a-z0-9_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base in HISTOGRAMS:
                name = base
            assert name in METRICS, f"{name} is not a sesflow metric (in {expr})"
            used.add(name)
    # What the dashboard promises to show.
    assert {
        "sesflow_sends_total",
        "sesflow_rate_configured_per_second",
        "sesflow_ses_call_seconds",
        "sesflow_ses_errors_total",
        "sesflow_stream_lag",
        "sesflow_stream_pending",
        "sesflow_dead_letters",
        "sesflow_events_total",
        "sesflow_redis_reconnects_total",
    } <= used
    assert any("histogram_quantile(0.99" in e for e in exprs(dashboard))
    assert any("histogram_quantile(0.5" in e for e in exprs(dashboard))
    # Job names used in queries are the scrape config's.
    scrape = load_yaml(DEPLOY / "prometheus/prometheus.yml")["scrape_configs"]
    jobs = {job["job_name"] for job in scrape}
    for expr in exprs(dashboard):
        for job in re.findall(r'job="([^"]+)"', expr):
            assert job in jobs


def test_grafana_panels_use_the_provisioned_datasource() -> None:
    provisioned = load_yaml(DEPLOY / "grafana/provisioning/datasources/sesflow.yml")
    sources = {d["uid"]: d for d in provisioned["datasources"]}
    prometheus = [d for d in sources.values() if d["type"] == "prometheus"]
    assert len(prometheus) == 1
    assert port_of(prometheus[0]["url"]) == 9090
    api = [d for d in sources.values() if d["url"].startswith("http://stats:")]
    assert api and port_of(api[0]["url"]) == DEFAULTS.stats_port
    dashboard = json.loads((DEPLOY / "grafana/dashboards/sesflow.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == prometheus[0]["uid"]
    providers = load_yaml(DEPLOY / "grafana/provisioning/dashboards/sesflow.yml")["providers"]
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./grafana/dashboards"] == providers[0]["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# --- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_with_sesflow_entrypoint() -> None:
    instructions = dockerfile_instructions()
    stages = [a for w, a in instructions if w == "FROM"]
    assert len(stages) >= 2 and stages[0].lower().endswith("as builder")
    args = dict(a.split("=", 1) for w, a in instructions if w == "ARG" and "=" in a)
    major, minor = (int(x) for x in args["PYTHON_VERSION"].split("."))
    assert (major, minor) >= (3, 11)
    assert all("-slim" in s for s in stages)
    assert any(w == "COPY" and "--from=builder" in a for w, a in instructions)
    users = [a for w, a in instructions if w == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    entrypoint = [json.loads(a) for w, a in instructions if w == "ENTRYPOINT"]
    assert entrypoint == [["sesflow"]]
    env = " ".join(a for w, a in runtime_stage() if w == "ENV")
    assert "BIND_HOST=0.0.0.0" in env
    assert any(w == "HEALTHCHECK" for w, _ in instructions)
    assert ("STOPSIGNAL", "SIGTERM") in instructions


def test_dockerfile_copies_only_what_exists_and_the_ignore_file_keeps() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = [ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")]
    assert "*" in ignore
    for word, args in dockerfile_instructions():
        if word != "COPY" or "--from=" in args:
            continue
        sources = [s for s in args.split()[:-1] if not s.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is excluded from the build context"
    # The package's own files must reach the builder.
    for package in ("sesflow/__init__.py", "cli", "common", *ROLES):
        assert package in allowed
    assert {"pyproject.toml", "README.md"} <= set(allowed)


# --- systemd ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_systemd_units_have_the_required_keys(role: str) -> None:
    name = "sesflow-sender@.service" if role == "sender" else f"sesflow-{role}.service"
    unit = read_unit(SYSTEMD / name)
    service = unit["Service"]
    assert unit.get("Unit", "Description")
    assert unit.get("Unit", "PartOf") == "sesflow.target"
    assert service["ExecStart"].rstrip("'").endswith(f"/opt/sesflow/bin/sesflow serve {role}")
    assert service["User"] not in {"root", "0"}
    assert service["EnvironmentFile"] == "/etc/sesflow/sesflow.env"
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > DEFAULTS.shutdown_grace
    assert service["Restart"] in {"always", "on-failure"}
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] in {"strict", "full"}
    assert service["PrivateTmp"] == "yes"
    assert unit.get("Install", "WantedBy") == "sesflow.target"


def test_systemd_target_wants_every_fixed_role() -> None:
    target = read_unit(SYSTEMD / "sesflow.target")
    wants = set(target.get("Unit", "Wants").split())
    assert wants == {f"sesflow-{r}.service" for r in ("ingest", "tracker", "stats")}
    assert target.get("Install", "WantedBy") == "multi-user.target"


# --- Kubernetes -------------------------------------------------------------------------------


def configured_grace() -> float:
    (config,) = [d for d in k8s_kind("ConfigMap") if d["metadata"]["name"] == "sesflow-config"]
    return float(config["data"].get("SHUTDOWN_GRACE", DEFAULTS.shutdown_grace))


def test_k8s_one_deployment_per_role_running_that_role() -> None:
    deployments = k8s_kind("Deployment")
    roles = [d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments]
    assert sorted(roles) == sorted(ROLES)
    for deployment, role in zip(deployments, roles, strict=True):
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert labels["app.kubernetes.io/component"] == role
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"].split(":")[0] == "sesflow"
        # The image's ENTRYPOINT is `sesflow`; `serve ROLE` are its arguments.
        command = [*container.get("command", ["sesflow"]), *container.get("args", [])]
        assert command == ["sesflow", "serve", role]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert list(ports.values()) == [ROLE_PORTS[role]]
        annotations = spec["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(ROLE_PORTS[role])
        # Readiness checks Redis; liveness must not, or a Redis outage restarts every pod.
        for probe, path in (("readinessProbe", "/health"), ("livenessProbe", "/livez")):
            get = container[probe]["httpGet"]
            assert get["path"] == path
            assert ports.get(get["port"], get["port"]) == ROLE_PORTS[role]
        # Stopping takes the preStop pause plus SHUTDOWN_GRACE; the pod must be given more.
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        pause = float(pre_stop["command"][1]) if pre_stop else 0.0
        assert pod["terminationGracePeriodSeconds"] > pause + configured_grace()
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["enableServiceLinks"] is False
        if role == "sender":
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])


def test_k8s_services_select_their_role_on_its_port() -> None:
    services = {s["metadata"]["name"]: s for s in k8s_kind("Service")}
    for role in ROLES:
        service = services[f"sesflow-{role}"]
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == role
        (port,) = service["spec"]["ports"]
        assert port["port"] == ROLE_PORTS[role]


def test_k8s_configmap_ports_match_the_code() -> None:
    (config,) = [d for d in k8s_kind("ConfigMap") if d["metadata"]["name"] == "sesflow-config"]
    for role, setting in PORT_SETTINGS.items():
        assert int(config["data"][setting]) == ROLE_PORTS[role]


def test_k8s_sender_hpa_scales_on_the_mail_waiting_for_senders() -> None:
    (hpa,) = k8s_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "sesflow-sender",
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"] == {"name": "sesflow_sender_backlog"}
    (adapter,) = [d for d in k8s_kind("ConfigMap") if d["metadata"]["name"] == "prometheus-adapter"]
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["externalRules"]
    assert [r["name"]["as"] for r in rules] == ["sesflow_sender_backlog"]
    assert "sesflow_backlog" in rules[0]["seriesQuery"]
    # The unpaused backlogs plus what is on `sends` and not yet read, both served by stats.
    query = rules[0]["metricsQuery"]
    assert 'lane!="paused"' in query
    assert 'sesflow_stream_lag{stream="sends",group="senders"' in query


def test_k8s_prometheus_scrape_names_jobs_like_compose() -> None:
    (scrape,) = [
        d for d in k8s_kind("ConfigMap") if d["metadata"]["name"] == "sesflow-prometheus-scrape"
    ]
    (job,) = yaml.safe_load(scrape["data"]["sesflow-scrape.yml"])["scrape_configs"]
    relabel = {r.get("target_label"): r for r in job["relabel_configs"]}
    assert relabel["job"]["replacement"] == "sesflow-$1"
    assert "pod" in relabel and "namespace" in relabel


def test_kustomization_lists_existing_files_and_every_deployment() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    resources = kustomization["resources"]
    for resource in resources:
        assert (K8S / resource).is_file(), resource
    for role in ROLES:
        assert f"{role}.yaml" in resources


# --- routing ----------------------------------------------------------------------------------


def service_roles() -> dict[str, str]:
    return {
        s["metadata"]["name"]: s["spec"]["selector"]["app.kubernetes.io/component"]
        for s in k8s_kind("Service")
    }


def ingress_role(rules: list[dict[str, Any]], host: str, path: str) -> str | None:
    """The role an Ingress sends `path` to: Exact beats Prefix, then the longest prefix."""
    (rule,) = [r for r in rules if r["host"] == host]
    best: tuple[int, int] | None = None
    chosen = None
    for entry in rule["http"]["paths"]:
        prefix, kind = entry["path"], entry["pathType"]
        if kind == "Exact":
            matched, rank = path == prefix, (1, len(prefix))
        else:
            stem = prefix.rstrip("/")
            matched = path == stem or path.startswith(stem + "/") or prefix == "/"
            rank = (0, len(stem))
        if matched and (best is None or rank > best):
            best, chosen = rank, entry["backend"]["service"]["name"]
    return service_roles().get(chosen) if chosen else None


def test_ingress_routes_every_compatibility_path_to_its_role() -> None:
    (ingress,) = k8s_kind("Ingress")
    rules = ingress["spec"]["rules"]
    main, stats_host = rules[0]["host"], rules[1]["host"]
    for method, path, role in COMPAT_ROUTES:
        got = ingress_role(rules, main, path)
        if method == "GET" and path.startswith("/v1/topics/"):
            # An Ingress cannot route by method: /v1/topics is ingest's (cancel) on the main
            # host; topic stats are read on the stats host (deploy/README.md).
            assert got == "ingest"
            assert ingress_role(rules, stats_host, path) == "stats"
        else:
            assert got == role, f"{method} {path} -> {got}, expected {role}"
    # Larger message batches than ingress-nginx's 1 MiB default must get through.
    size = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert size.endswith("m") and int(size[:-1]) * 1024 * 1024 >= DEFAULTS.max_request_bytes


def test_ingress_tracker_host_is_the_public_url() -> None:
    (ingress,) = k8s_kind("Ingress")
    (config,) = [d for d in k8s_kind("ConfigMap") if d["metadata"]["name"] == "sesflow-config"]
    host = config["data"]["SERVER_URL"].split("://", 1)[1].rstrip("/")
    assert host == ingress["spec"]["rules"][0]["host"]
    assert ingress_role(ingress["spec"]["rules"], host, "/v1/events/open") == "tracker"


def httproute_role(route: dict[str, Any], method: str, path: str) -> str | None:
    """Gateway API precedence: Exact path, then longest prefix, then a method match."""
    ports = {f"sesflow-{r}": ROLE_PORTS[r] for r in ROLES}
    best: tuple[int, int, int] | None = None
    chosen = None
    for rule in route["spec"]["rules"]:
        for match in rule["matches"]:
            kind, value = match["path"]["type"], match["path"]["value"]
            if match.get("method", method) != method:
                continue
            if kind == "Exact":
                matched = path == value
            else:
                stem = value.rstrip("/")
                matched = value == "/" or path == stem or path.startswith(stem + "/")
            rank = (int(kind == "Exact"), len(value.rstrip("/")), int("method" in match))
            if matched and (best is None or rank > best):
                (backend,) = rule["backendRefs"]
                assert backend["port"] == ports[backend["name"]]
                best, chosen = rank, backend["name"]
    return service_roles().get(chosen) if chosen else None


def test_gateway_route_sends_every_compatibility_request_to_its_role() -> None:
    (route,) = k8s_kind("HTTPRoute")
    for method, path, role in COMPAT_ROUTES:
        assert httproute_role(route, method, path) == role, f"{method} {path}"


# Paths each role serves for itself, not through the public routes: probes and scraping.
PER_ROLE_PATHS = {"/health", "/livez", "/metrics"}


@functools.cache
def served_routes() -> dict[tuple[str, str], frozenset[str]]:
    """(method, path with sample values) -> the roles whose app answers it, read off the apps
    themselves: a route added to a role is checked against the deploy routes without a list
    to keep up to date. The pause routes' CORS preflights (OPTIONS, for the dashboard) are
    answered where the routes are."""
    from sesflow.ingest.api import create_app as ingest_app
    from sesflow.ingest.dashboard_cors import PAUSE_PATH
    from sesflow.stats.api import create_app as stats_app
    from sesflow.tracker.app import create_app as tracker_app

    served: dict[tuple[str, str], set[str]] = {}
    for role, make in (("ingest", ingest_app), ("tracker", tracker_app), ("stats", stats_app)):
        for route in make(DEFAULTS).router.routes():
            info = route.resource.get_info() if route.resource else {}
            template = info.get("path") or info.get("formatter") or ""
            if route.method == "HEAD" or template in PER_ROLE_PATHS or not template:
                continue
            path = re.sub(r"\{[^}]+\}", "x1", template)
            methods = [route.method] + (["OPTIONS"] if PAUSE_PATH.match(path) else [])
            for method in methods:
                served.setdefault((method, path), set()).add(role)
    return {key: frozenset(roles) for key, roles in served.items()}


def test_gateway_route_sends_every_route_to_a_role_that_serves_it() -> None:
    (route,) = k8s_kind("HTTPRoute")
    wrong = {
        f"{method} {path} -> {got}, served by {sorted(roles)}"
        for (method, path), roles in served_routes().items()
        if (got := httproute_role(route, method, path)) not in roles
    }
    assert not wrong


def test_ingress_routes_every_route_to_a_role_that_serves_it_on_one_of_its_hosts() -> None:
    """An Ingress cannot route by method: a path two roles share goes to ingest on the main
    host, and the stats host serves every stats path (deploy/README.md)."""
    (ingress,) = k8s_kind("Ingress")
    rules = ingress["spec"]["rules"]
    main, stats_host = rules[0]["host"], rules[1]["host"]
    wrong = {
        f"{method} {path}: served by {sorted(roles)}"
        for (method, path), roles in served_routes().items()
        if ingress_role(rules, main, path) not in roles
        and ingress_role(rules, stats_host, path) not in roles
    }
    assert not wrong
    assert ingress_role(rules, main, "/v1/messages") == "ingest"


# --- the image's health check ------------------------------------------------------------------


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sesflow_healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_finds_the_role_on_pid_1() -> None:
    check = load_healthcheck()
    assert check.role_from_cmdline(b"/opt/sesflow/bin/python\0/opt/sesflow/bin/sesflow\0sender\0")
    assert check.role_from_cmdline(b"python\0-m\0sesflow.stats\0") == "stats"
    assert check.role_from_cmdline(b"/opt/sesflow/bin/sesflow\0serve\0tracker\0") == "tracker"
    assert check.role_from_cmdline(b"sesflow\0--help\0") is None
    for role in ROLES:
        assert port_of(check.health_url(DEFAULTS, role)) == ROLE_PORTS[role]


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def test_healthcheck_calls_health_on_the_role_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = load_healthcheck()
    monkeypatch.chdir(tmp_path)  # no .env here
    server = HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("BIND_HOST", "0.0.0.0")
        monkeypatch.setenv("STATS_PORT", str(server.server_port))
        cmdline = tmp_path / "cmdline"
        cmdline.write_bytes(b"/opt/sesflow/bin/sesflow\0stats\0")
        assert check.main([], cmdline_path=str(cmdline)) == 0
        monkeypatch.setenv("TRACKER_PORT", str(free_port()))  # nothing listens there
        assert check.main(["tracker"]) == 1
        assert check.main(["nobody"]) == 2
    finally:
        server.shutdown()
        server.server_close()
