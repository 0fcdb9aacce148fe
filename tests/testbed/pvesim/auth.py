"""Authentication and privilege checks as pve-access-control does them.

* API tokens: ``Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`` (the
  value is uri-unescaped and split at the LAST ``=``).  No CSRF token needed.
* Tickets: ``POST /access/ticket`` -> ``PVE:<user>:<HEXTIME>::<signature>``,
  sent back as cookie ``PVEAuthCookie``; non-GET calls also need the
  ``CSRFPreventionToken`` header.  2 h lifetime; renew by posting the ticket as
  the password.
* Privileges: ACL entries (path, user/group/token, role, propagate) resolved
  from ``/`` down to the checked path (more specific paths override).
  Privilege-separated tokens get the intersection of user and token ACLs.
  ``root@pam`` may do anything.  Checks come from the schema's ``permissions``
  (``['perm', path, [privs], 'any', 1]``, ``['and', ...]``, ``['or', ...]``).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable
from urllib.parse import unquote

from .errors import ApiError, perm_error, unauthorized

log = logging.getLogger(__name__)

TICKET_LIFETIME = 2 * 3600
# PVE 9 privilege list (pve-access-control PVE::AccessControl $privgroups).
ALL_PRIVILEGES: tuple[str, ...] = (
    "Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate", "Datastore.Audit",
    "Group.Allocate", "Mapping.Audit", "Mapping.Modify", "Mapping.Use", "Permissions.Modify",
    "Pool.Allocate", "Pool.Audit", "Realm.Allocate", "Realm.AllocateUser", "SDN.Allocate", "SDN.Audit",
    "SDN.Use", "Sys.AccessNetwork", "Sys.Audit", "Sys.Console", "Sys.Incoming", "Sys.Modify",
    "Sys.PowerMgmt", "Sys.Syslog", "User.Modify", "VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone",
    "VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Cloudinit", "VM.Config.Disk", "VM.Config.HWType",
    "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options", "VM.Console",
    "VM.GuestAgent.Audit", "VM.GuestAgent.FileRead", "VM.GuestAgent.FileSystemMgmt",
    "VM.GuestAgent.FileWrite", "VM.GuestAgent.Unrestricted", "VM.Migrate", "VM.PowerMgmt",
    "VM.Replicate", "VM.Snapshot", "VM.Snapshot.Rollback",
)
_VM_CONFIG = ["VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Cloudinit", "VM.Config.Disk",
              "VM.Config.HWType", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options"]
_GUEST_AGENT = ["VM.GuestAgent.Audit", "VM.GuestAgent.FileRead", "VM.GuestAgent.FileSystemMgmt",
                "VM.GuestAgent.FileWrite", "VM.GuestAgent.Unrestricted"]
BUILTIN_ROLES: dict[str, list[str]] = {
    "Administrator": list(ALL_PRIVILEGES),
    "NoAccess": [],
    "PVEAuditor": ["Datastore.Audit", "Mapping.Audit", "Pool.Audit", "SDN.Audit", "Sys.Audit", "VM.Audit",
                   "VM.GuestAgent.Audit"],
    "PVETemplateUser": ["VM.Audit", "VM.Clone"],
    "PVEVMUser": ["VM.Audit", "VM.Backup", "VM.Config.CDROM", "VM.Config.Cloudinit", "VM.Console",
                  "VM.PowerMgmt", "VM.GuestAgent.Audit"],
    "PVEVMAdmin": ["VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone", *_VM_CONFIG, "VM.Console",
                   "VM.Migrate", "VM.PowerMgmt", "VM.Snapshot", "VM.Snapshot.Rollback", *_GUEST_AGENT,
                   "Datastore.AllocateSpace", "Datastore.Audit", "SDN.Use"],
    "PVEDatastoreUser": ["Datastore.AllocateSpace", "Datastore.Audit"],
    "PVEDatastoreAdmin": ["Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate",
                          "Datastore.Audit"],
    "PVESDNUser": ["SDN.Audit", "SDN.Use"],
}
TOKEN_HEADER_RE = re.compile(r"(?:^|\s)PVEAPIToken(?:=| )([^;]*)")
COOKIE_RE = re.compile(r"(?:^|\s)PVEAuthCookie(?:=| )([^;]*)")
TOKENID_RE = re.compile(r"^([^\s:/]+@[A-Za-z][A-Za-z0-9.\-_]+)!([A-Za-z][A-Za-z0-9.\-_]+)$")


def normalize_path(path: str) -> str:
    path = "/" + "/".join(p for p in path.split("/") if p)
    return path


def path_chain(path: str) -> list[str]:
    parts = [p for p in normalize_path(path).split("/") if p]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass
class User:
    userid: str
    password: str | None = None
    enabled: bool = True
    groups: list[str] = field(default_factory=list)


@dataclass
class Token:
    tokenid: str  # user@realm!name
    secret: str
    privsep: bool = True
    expire: int = 0

    @property
    def userid(self) -> str:
        return self.tokenid.split("!", 1)[0]


@dataclass
class AclEntry:
    path: str
    ugid: str  # user@realm, user@realm!token, or @group
    roleid: str
    propagate: bool = True


@dataclass
class Identity:
    """Who is calling: a user (ticket) or a token."""

    authid: str  # user@realm or user@realm!token (PVE's "username" for tokens)
    via: str  # "ticket" | "token"
    ticket: str | None = None

    @property
    def userid(self) -> str:
        return self.authid.split("!", 1)[0]

    @property
    def tokenname(self) -> str | None:
        return self.authid.split("!", 1)[1] if "!" in self.authid else None


class AccessControl:
    """Users, tokens, roles, ACLs, tickets.  Thread-safe."""

    def __init__(self, cfg: dict[str, Any], secret: bytes | None = None) -> None:
        self._lock = threading.RLock()
        self._key = secret or secrets.token_bytes(32)
        self.users: dict[str, User] = {}
        self.tokens: dict[str, Token] = {}
        self.roles: dict[str, list[str]] = {k: list(v) for k, v in BUILTIN_ROLES.items()}
        self.acl: list[AclEntry] = []
        self.load(cfg)

    # -- configuration --------------------------------------------------------
    def load(self, cfg: dict[str, Any]) -> None:
        with self._lock:
            for userid, spec in (cfg.get("users") or {}).items():
                self.users[userid] = User(userid, spec.get("password"), spec.get("enabled", True), spec.get("groups", []))
            self.users.setdefault("root@pam", User("root@pam"))
            for tokenid, spec in (cfg.get("tokens") or {}).items():
                self.add_token(tokenid, spec["secret"], bool(spec.get("privsep", True)))
            for roleid, privs in (cfg.get("roles") or {}).items():
                self.add_role(roleid, privs)
            for entry in cfg.get("acl") or []:
                self.add_acl(entry["path"], entry["ugid"], entry["roleid"], bool(entry.get("propagate", True)))

    def add_role(self, roleid: str, privs: Iterable[str]) -> None:
        privs = list(privs)
        unknown = [p for p in privs if p not in ALL_PRIVILEGES]
        if unknown:
            raise ValueError(f"unknown privileges {unknown}")
        with self._lock:
            self.roles[roleid] = privs

    def add_token(self, tokenid: str, secret: str, privsep: bool = True) -> Token:
        m = TOKENID_RE.match(tokenid)
        if not m:
            raise ValueError(f"invalid token id {tokenid!r}")
        with self._lock:
            self.users.setdefault(m.group(1), User(m.group(1)))
            token = Token(tokenid, secret, privsep)
            self.tokens[tokenid] = token
            return token

    def add_acl(self, path: str, ugid: str, roleid: str, propagate: bool = True) -> None:
        if roleid not in self.roles:
            raise ValueError(f"unknown role {roleid!r}")
        with self._lock:
            self.acl.append(AclEntry(normalize_path(path), ugid, roleid, propagate))

    # -- authentication -------------------------------------------------------
    def verify_token_header(self, header: str) -> Identity:
        m = TOKEN_HEADER_RE.search(header)
        value = unquote(m.group(1)) if m else ""
        if "=" not in value:
            raise unauthorized("invalid token value!")
        tokenid, secret = value.rsplit("=", 1)
        tm = TOKENID_RE.match(tokenid)
        if not tm:
            raise unauthorized(f"invalid API token ID '{tokenid}'")
        with self._lock:
            user = self.users.get(tm.group(1))
            if user is None or not user.enabled:
                raise unauthorized(f"user '{tm.group(1)}' is disabled" if user else f"no such user ('{tm.group(1)}')")
            token = self.tokens.get(tokenid)
            if token is None:
                raise unauthorized(f"no such token '{tm.group(2)}' for user '{tm.group(1)}'")
            if token.expire and token.expire < time.time():
                raise unauthorized("token expired")
            if not hmac.compare_digest(token.secret.encode(), secret.encode()):
                raise unauthorized("invalid token value!")
        return Identity(tokenid, "token")

    def _sign(self, text: str) -> str:
        digest = hmac.new(self._key, text.encode(), hashlib.sha256).digest()
        return base64.b64encode(digest).decode().rstrip("=")

    def create_ticket(self, userid: str) -> str:
        plain = f"PVE:{userid}:{int(time.time()):08X}"
        return f"{plain}::{self._sign(plain)}"

    def verify_ticket(self, ticket: str) -> str:
        m = re.fullmatch(r"(PVE:([^:]+):([0-9A-F]{8}))::(.+)", ticket)
        if not m or not hmac.compare_digest(self._sign(m.group(1)), m.group(4)):
            raise unauthorized("permission denied - invalid PVE ticket")
        age = time.time() - int(m.group(3), 16)
        if age < -300 or age > TICKET_LIFETIME:
            raise unauthorized("permission denied - invalid PVE ticket")
        userid = m.group(2)
        with self._lock:
            user = self.users.get(userid)
            if user is None or not user.enabled:
                raise unauthorized("permission denied - invalid PVE ticket")
        return userid

    def csrf_token(self, userid: str) -> str:
        stamp = f"{int(time.time()):08X}"
        return f"{stamp}:{self._sign(stamp + ':' + userid)}"

    def verify_csrf(self, userid: str, token: str | None) -> None:
        m = re.fullmatch(r"([0-9A-F]{8}):(.+)", token or "")
        if not m or not hmac.compare_digest(self._sign(m.group(1) + ":" + userid), m.group(2)):
            raise unauthorized("Permission denied - invalid csrf token")
        age = time.time() - int(m.group(1), 16)
        if age < -300 or age > TICKET_LIFETIME:
            raise unauthorized("Permission denied - invalid csrf token")

    def login(self, username: str, password: str, realm: str | None = None) -> str | None:
        """Password (or a valid ticket for renewal) -> userid, else None."""
        if realm and "@" not in username:
            username = f"{username}@{realm}"
        with self._lock:
            user = self.users.get(username)
        if user is None or not user.enabled:
            return None
        if password.startswith("PVE:"):
            try:
                if self.verify_ticket(password) == username:
                    return username
            except ApiError:
                return None
            return None
        if user.password is not None and hmac.compare_digest(user.password.encode(), password.encode()):
            return username
        return None

    # -- privileges -----------------------------------------------------------
    def _acl_privs(self, ugids: set[str], path: str, groups_of_user: set[str]) -> set[str]:
        """Walk / -> path; at each level with matching entries, they replace the set."""
        privs: set[str] = set()
        for level in path_chain(path):
            entries = [e for e in self.acl if e.path == level and (e.propagate or level == normalize_path(path))]
            user_entries = [e for e in entries if e.ugid in ugids]
            group_entries = [e for e in entries if e.ugid.startswith("@") and e.ugid[1:] in groups_of_user]
            chosen = user_entries or group_entries
            if chosen:
                privs = set()
                for entry in chosen:
                    privs.update(self.roles.get(entry.roleid, []))
        return privs

    def permissions(self, authid: str, path: str) -> set[str]:
        with self._lock:
            userid = authid.split("!", 1)[0]
            if userid == "root@pam" and "!" not in authid:
                return set(ALL_PRIVILEGES)
            user = self.users.get(userid)
            if user is None or not user.enabled:
                return set()
            groups = set(user.groups)
            if userid == "root@pam":
                user_privs = set(ALL_PRIVILEGES)
            else:
                user_privs = self._acl_privs({userid}, path, groups)
            if "!" not in authid:
                return user_privs
            token = self.tokens.get(authid)
            if token is None:
                return set()
            if not token.privsep:
                return user_privs
            return user_privs & self._acl_privs({authid}, path, set())

    def effective_permissions(self, authid: str, only: str | None = None) -> dict[str, dict[str, int]]:
        """GET /access/permissions: path -> {priv: propagate(1/0)}."""
        with self._lock:
            paths = {"/", "/access", "/access/groups", "/nodes", "/pool", "/sdn", "/storage", "/vms", "/mapping"}
            paths.update(e.path for e in self.acl)
        if only is not None:
            paths = {normalize_path(only)}
        out: dict[str, dict[str, int]] = {}
        for p in sorted(paths):
            privs = self.permissions(authid, p)
            if privs:
                out[p] = {priv: 1 for priv in sorted(privs)}
        return out

    def check_api2_permissions(self, perm: dict[str, Any] | None, identity: Identity, params: dict[str, Any]) -> None:
        """PVE::RPCEnvironment::check_api2_permissions."""
        if perm and perm.get("user") == "world":
            return
        if identity.authid == "root@pam":
            return
        if not perm:
            raise perm_error("user != root@pam")
        if perm.get("user") == "all":
            return
        if perm.get("check"):
            self._exec_check(perm["check"], identity.authid, params, noerr=False)
            return
        raise perm_error()

    def _exec_check(self, check: list[Any], authid: str, params: dict[str, Any], noerr: bool) -> bool:
        test = check[0]
        if test == "and":
            for sub in check[1:]:
                if not self._exec_check(sub, authid, params, noerr):
                    return False
            return True
        if test == "or":
            for sub in check[1:]:
                if self._exec_check(sub, authid, params, True):
                    return True
            if noerr:
                return False
            raise perm_error()
        if test == "perm":
            tmpl, privs = check[1], check[2]
            options = dict(zip(check[3::2], check[4::2]))
            require = options.get("require_param")
            if require and params.get(require) is None:
                if noerr:
                    return False
                raise perm_error()
            path = normalize_path(re.sub(r"\{(\w+)\}", lambda m: str(params.get(m.group(1), "")), tmpl))
            have = self.permissions(authid, path)
            if options.get("any"):
                if any(p in have for p in privs):
                    return True
                if noerr:
                    return False
                raise perm_error(f"{path}, {'|'.join(privs)}")
            for priv in privs:
                if priv not in have:
                    if noerr:
                        return False
                    raise perm_error(f"{path}, {priv}")
            return True
        if test in ("userid-param", "userid-group", "perm-modify"):
            # not needed by the simulated endpoints; be strict like PVE for non-root
            if noerr:
                return False
            raise perm_error()
        raise ApiError(500, f"unknown permission test '{test}'\n")

    def has(self, authid: str, path: str, privs: Iterable[str], any_: bool = False) -> bool:
        if authid == "root@pam":
            return True
        have = self.permissions(authid, path)
        privs = list(privs)
        return any(p in have for p in privs) if any_ else all(p in have for p in privs)


def extract_cookie_ticket(cookie_header: str | None, auth_header: str | None) -> str | None:
    """pve-http-server: prefer the cookie, then ``PVEAuthCookie`` in Authorization."""
    for header in (cookie_header, auth_header):
        if header:
            m = COOKIE_RE.search(header)
            if m and m.group(1):
                return unquote(m.group(1))
    return None
