"""Simulator settings and seed data: defaults < TOML file < command-line flags.

The seed data (docs/simulator.md): agents 1001..1010 with extensions
71001..71010, supervisor 2001, two teams, every password the same and printed at start.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A bad setting; the message names the key."""


@dataclass
class AgentSeed:
    id: str
    login_name: str
    first_name: str
    last_name: str
    extension: str
    team_id: str
    roles: tuple[str, ...] = ("Agent",)
    password: str | None = None  # None: the simulator-wide password
    wrap_up_on_incoming: str = "OPTIONAL"  # REQUIRED | OPTIONAL | NOT_ALLOWED
    wrap_up_on_outgoing: str = "OPTIONAL"


@dataclass
class TeamSeed:
    id: str
    name: str


@dataclass
class QueueSeed:
    name: str
    number: str
    members: tuple[str, ...] = ()  # agent ids; empty means every agent


@dataclass
class ReasonSeed:
    id: int
    category: str  # NOT_READY | LOGOUT
    code: int
    label: str


@dataclass
class WrapUpSeed:
    id: int
    label: str


FIRST_NAMES = ("Mia", "Noah", "Ava", "Liam", "Zoe", "Omar", "Lena", "Ravi", "Ines", "Tom")
LAST_NAMES = ("Brown", "Garcia", "Chen", "Okafor", "Novak", "Haddad", "Berg", "Iyer", "Silva", "Kim")


def seed_agents(count: int) -> list[AgentSeed]:
    """Agents 1001.. with extensions 7{id}; the last two of the first ten need wrap-up.

    Past 999 agents the ids continue at 10001 so that 2001 stays the supervisor.
    """
    agents = []
    for k in range(count):
        agent_id = str(1001 + k) if k < 999 else str(10001 + k - 999)
        required = "REQUIRED" if k % 10 in (8, 9) else "OPTIONAL"
        agents.append(AgentSeed(
            id=agent_id, login_name=f"agent{agent_id}",
            first_name=FIRST_NAMES[k % 10], last_name=LAST_NAMES[(k // 10) % 10],
            extension="7" + agent_id, team_id="1" if k % 10 < 5 else "2",
            wrap_up_on_incoming=required, wrap_up_on_outgoing="OPTIONAL"))
    return agents


def default_supervisors() -> list[AgentSeed]:
    return [AgentSeed(id="2001", login_name="super2001", first_name="Sam", last_name="Rivera",
                      extension="72001", team_id="1", roles=("Agent", "Supervisor"))]


@dataclass
class SimConfig:
    """Everything the simulator reads; times are in seconds."""

    host: str = "127.0.0.1"
    rest_port: int = 8082
    xmpp_port: int = 5222
    password: str = "finesse"
    deployment: str = "UCCE"  # UCCE | UCCX
    agent_count: int = 10
    primary_host: str = "finesse-a.local"
    secondary_host: str = "finesse-b.local"
    xmpp_tls: bool = False  # offer STARTTLS with a generated self-signed certificate
    xmpp_require_tls: bool = False
    tls_dir: str | None = None  # where the generated certificate is written (default: temp dir)
    presence_grace_seconds: float = 60.0  # Finesse: presence gone this long -> forced logout
    lockout_attempts: int = 5
    lockout_seconds: float = 300.0
    outbound_answer_seconds: float | None = 2.0  # far end answers after this; None: control API only
    internal_ring_seconds: float = 0.0  # delay before a dialled agent starts ringing
    wrap_up_seconds: float = 60.0
    require_reason_codes: bool = False
    timezone_offset_minutes: int = 0
    teams: list[TeamSeed] = field(default_factory=lambda: [TeamSeed("1", "Sales"), TeamSeed("2", "Support")])
    agents: list[AgentSeed] = field(default_factory=list)  # empty: seed_agents(agent_count)
    supervisors: list[AgentSeed] = field(default_factory=default_supervisors)
    supervised_teams: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"2001": ("1", "2")})
    queues: list[QueueSeed] = field(default_factory=lambda: [
        QueueSeed("Sales", "5001"), QueueSeed("Support", "5002")])
    reason_codes: list[ReasonSeed] = field(default_factory=lambda: [
        ReasonSeed(1, "NOT_READY", 10, "Break"), ReasonSeed(2, "NOT_READY", 11, "Lunch"),
        ReasonSeed(3, "NOT_READY", 12, "Meeting"), ReasonSeed(4, "NOT_READY", 13, "Training"),
        ReasonSeed(11, "LOGOUT", 20, "End of shift"), ReasonSeed(12, "LOGOUT", 21, "Personal")])
    wrap_up_reasons: list[WrapUpSeed] = field(default_factory=lambda: [
        WrapUpSeed(1, "Sale"), WrapUpSeed(2, "Resolved"), WrapUpSeed(3, "Callback requested"),
        WrapUpSeed(4, "Wrong number")])

    def all_agents(self) -> list[AgentSeed]:
        return (self.agents or seed_agents(self.agent_count)) + list(self.supervisors)

    def validate(self) -> "SimConfig":
        if self.deployment not in ("UCCE", "UCCX"):
            raise ConfigError(f"deployment: must be UCCE or UCCX, not {self.deployment!r}")
        for key in ("rest_port", "xmpp_port"):
            value = getattr(self, key)
            if not isinstance(value, int) or not 0 <= value < 65535:
                raise ConfigError(f"{key}: must be a port number, not {value!r}")
        if self.agent_count < 1 or self.agent_count > 20000:
            raise ConfigError(f"agent_count: must be 1..20000, not {self.agent_count!r}")
        for key in ("presence_grace_seconds", "lockout_seconds", "wrap_up_seconds"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must not be negative")
        return self


_SEED_TYPES: dict[str, Any] = {"teams": TeamSeed, "agents": AgentSeed, "supervisors": AgentSeed,
                               "queues": QueueSeed, "reason_codes": ReasonSeed,
                               "wrap_up_reasons": WrapUpSeed}


def from_mapping(values: dict[str, Any], base: SimConfig | None = None) -> SimConfig:
    """Apply a mapping (TOML-style lower-case keys) over ``base``; unknown keys are errors."""
    config = dataclasses.replace(base) if base else SimConfig()
    known = {f.name for f in dataclasses.fields(SimConfig)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{key}: unknown setting")
        if key in _SEED_TYPES:
            try:
                value = [_SEED_TYPES[key](**item) for item in value]
            except TypeError as exc:
                raise ConfigError(f"{key}: {exc}") from exc
            for item in value:
                for attr in ("roles", "members"):
                    if hasattr(item, attr):
                        setattr(item, attr, tuple(getattr(item, attr)))
        elif key == "supervised_teams":
            value = {str(k): tuple(v) for k, v in value.items()}
        setattr(config, key, value)
    return config.validate()


def load_file(path: str, base: SimConfig | None = None) -> SimConfig:
    """Read a TOML file; its keys may sit at the top or under a ``[simulator]`` table."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    return from_mapping(data.get("simulator", data), base)
