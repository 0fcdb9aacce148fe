"""Config loading and validation: every class of bad input gets an error naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nixgold.config.model import Config
from nixgold.config.load import describe_config, find_config_file, load_config, parse_config, parse_override
from nixgold.units import duration_seconds
from nixgold.config.credentials import load_credentials
from nixgold.errors import ConfigError, ExitCode

REPO = Path(__file__).resolve().parents[1]
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@laptop"


def test_example_config_is_valid_and_equals_the_defaults() -> None:
    config = load_config(REPO / "nixgold.example.toml", env={})
    assert config == Config()
    assert config.source == str(REPO / "nixgold.example.toml")
    assert config.channel == "nixos-26.05"


# (raw TOML data, key path the message must name, a fragment of what is expected)
BAD_INPUTS = [
    pytest.param({"foo": {}}, "foo", "one of the sections", id="unknown-section"),
    pytest.param({"vm": {"cors": 2}}, "vm.cors", "did you mean 'cores'", id="unknown-key-typo"),
    pytest.param({"vm": {"cores": "2"}}, "vm.cores", "an integer", id="wrong-type-str-for-int"),
    pytest.param({"vm": {"cores": True}}, "vm.cores", "an integer", id="wrong-type-bool-for-int"),
    pytest.param({"nixos": {"flakes": 1}}, "nixos.flakes", "true or false", id="wrong-type-int-for-bool"),
    pytest.param({"template": {"tags": "nixos"}}, "template.tags", "a list of strings", id="wrong-type-list"),
    pytest.param({"vm": "big"}, "vm", "a table", id="section-not-a-table"),
    pytest.param({"template": {"vmid": 99}}, "template.vmid", "between 100 and 999999999", id="vmid-low"),
    pytest.param({"template": {"vmid": 1_000_000_000}}, "template.vmid", "between 100", id="vmid-high"),
    pytest.param({"template": {"name": "nixos_golden"}}, "template.name", "DNS-style", id="name-underscore"),
    pytest.param({"template": {"name": "-lead"}}, "template.name", "DNS-style", id="name-leading-dash"),
    pytest.param({"template": {"tags": ["ok", "bad tag"]}}, "template.tags[1]", "PVE tag", id="tag-space"),
    pytest.param({"template": {"tags": []}}, "template.tags", "at least one tag", id="tags-empty"),
    pytest.param({"proxmox": {"node": "pve_1"}}, "proxmox.node", "node name", id="node-underscore"),
    pytest.param({"proxmox": {"url": "http://pve:8006"}}, "proxmox.url", "https://", id="url-not-https"),
    pytest.param({"proxmox": {"token_id": "root@pam"}}, "proxmox.token_id", "user@realm!tokenid", id="token-id"),
    pytest.param({"proxmox": {"timeout": 2}}, "proxmox.timeout", "between 5 and 600", id="timeout-range"),
    pytest.param({"vm": {"storage": "local lvm"}}, "vm.storage", "storage id", id="storage-id"),
    pytest.param({"vm": {"efi_storage": "-x"}}, "vm.efi_storage", "storage id", id="efi-storage-id"),
    pytest.param({"vm": {"bridge": "vmbr 0"}}, "vm.bridge", "bridge id", id="bridge-id"),
    pytest.param({"vm": {"vlan": 5000}}, "vm.vlan", "between 1 and 4094", id="vlan-range"),
    pytest.param({"vm": {"disk_size": "20GB"}}, "vm.disk_size", "a size like 20G", id="disk-size-format"),
    pytest.param({"vm": {"disk_size": "4G"}}, "vm.disk_size", "at least 8G", id="disk-size-small"),
    pytest.param({"vm": {"disk_type": "ide"}}, "vm.disk_type", "scsi, virtio or sata", id="disk-type"),
    pytest.param({"vm": {"disk_format": "vmdk"}}, "vm.disk_format", "raw", id="disk-format"),
    pytest.param({"vm": {"cores": 0}}, "vm.cores", "between 1 and 128", id="cores-range"),
    pytest.param({"vm": {"memory": 512}}, "vm.memory", "1024", id="memory-range"),
    pytest.param({"vm": {"firmware": "efi"}}, "vm.firmware", "uefi or bios", id="firmware-enum"),
    pytest.param({"vm": {"scsi_controller": "virtio"}}, "vm.scsi_controller", "virtio-scsi-single", id="scsihw-enum"),
    pytest.param({"nixos": {"release": "26.04"}}, "nixos.release", "YY.05 or YY.11", id="release-format"),
    pytest.param({"nixos": {"release": "22.11"}}, "nixos.release", "between 23.05", id="release-too-old"),
    pytest.param({"nixos": {"locale": "en US"}}, "nixos.locale", "en_US.UTF-8", id="locale"),
    pytest.param({"nixos": {"timezone": "Europe/Ber lin"}}, "nixos.timezone", "no spaces", id="timezone"),
    pytest.param({"nixos": {"keymap": "de;rm -rf"}}, "nixos.keymap", "keymap", id="keymap"),
    pytest.param({"nixos": {"packages": ["htop", "foo bar"]}}, "nixos.packages[1]", "attribute path", id="package-path"),
    pytest.param({"nixos": {"packages": ["let"]}}, "nixos.packages[0]", "attribute path", id="package-keyword"),
    pytest.param({"nixos": {"permit_root_login": "yes"}}, "nixos.permit_root_login", "prohibit-password", id="root-login"),
    pytest.param({"iso": {"volume": "local:iso/x.img"}}, "iso.volume", "local:iso/", id="iso-volume"),
    pytest.param({"iso": {"url": "http://x/y.iso", "sha256": "0" * 64}}, "iso.url", "https://", id="iso-url-http"),
    pytest.param({"iso": {"url": "https://releases.nixos.org/a/b.iso"}}, "iso.sha256", "sha256", id="iso-url-no-sha"),
    pytest.param({"iso": {"url": "https://releases.nixos.org/a/b.iso", "sha256": "XYZ"}}, "iso.sha256", "64", id="iso-sha"),
    pytest.param({"iso": {"url": "https://channels.nixos.org/nixos-26.05/latest-nixos-minimal-x86_64-linux.iso",
                          "sha256": "0" * 64}}, "iso.sha256", "latest-*", id="iso-latest-with-sha"),
    pytest.param({"iso": {"volume": "local:iso/a.iso", "url": "https://x/a.iso", "sha256": "0" * 64}}, "iso.url",
                 "not both", id="iso-volume-and-url"),
    pytest.param({"iso": {"channel": "unstable"}}, "iso.channel", "nixos-26.05", id="iso-channel"),
    pytest.param({"users": {"name": "x"}}, "users", "array of tables", id="users-not-array"),
    pytest.param({"users": [{"ssh_keys": []}]}, "users[0].name", "required", id="user-missing-name"),
    pytest.param({"users": [{"name": "Ops"}]}, "users[0].name", "POSIX", id="user-name"),
    pytest.param({"users": [{"name": "root"}]}, "users[0].name", "reserved", id="user-reserved"),
    pytest.param({"users": [{"name": "a"}, {"name": "a"}]}, "users[1].name", "not used by another", id="user-dup"),
    pytest.param({"users": [{"name": "a", "shell": "zsh"}]}, "users[0].shell", "known user key", id="user-key"),
    pytest.param({"users": [{"name": "a", "ssh_keys": ["ssh-ed25519 AAAAnotbase64 x"]}]}, "users[0].ssh_keys[0]",
                 "parses", id="ssh-key-garbage"),
    pytest.param({"users": [{"name": "a", "ssh_keys": ["ecdsa AAAA"]}]}, "users[0].ssh_keys[0]", "OpenSSH public key",
                 id="ssh-key-type"),
    pytest.param({"users": [{"name": "a", "ssh_keys": [ED25519 + "\nssh-rsa AAAA"]}]}, "users[0].ssh_keys[0]",
                 "one public key on one line", id="ssh-key-newline"),
    pytest.param({"build": {"dialect": "new"}}, "build.dialect", "auto, plugin", id="dialect"),
    pytest.param({"build": {"boot_wait": "10 s"}}, "build.boot_wait", "duration", id="duration-format"),
    pytest.param({"build": {"key_interval": "0ms"}}, "build.key_interval", "positive", id="duration-zero"),
    pytest.param({"build": {"task_timeout": "5m"}}, "build.task_timeout", "at least 10m", id="task-timeout-min"),
    pytest.param({"build": {"install_report_wait": "soon"}}, "build.install_report_wait", "0s: no warning",
                 id="install-report-wait"),
    pytest.param({"build": {"http_bind_address": "1.2.3.4", "http_interface": "eth0"}}, "build.http_interface",
                 "not both", id="http-exclusive"),
    pytest.param({"build": {"http_bind_address": "pve.lan"}}, "build.http_bind_address", "IPv4", id="http-ip"),
    pytest.param({"build": {"http_port": 80}}, "build.http_port", "1024", id="http-port"),
    pytest.param({"verify": {"clones": 0}}, "verify.clones", "between 1 and 8", id="clones-range"),
    pytest.param({"verify": {"profile": "debian"}}, "verify.profile", "nixos or generic", id="profile"),
    pytest.param({"verify": {"ipconfig0": "dhcp"}}, "verify.ipconfig0", "ip=dhcp", id="ipconfig-format"),
    pytest.param({"verify": {"ipconfig0": "ip=dhcp,gw=10.0.0.1"}}, "verify.ipconfig0", "static", id="ipconfig-gw"),
    pytest.param({"verify": {"ipconfig0": "ip=10.0.0.5"}}, "verify.ipconfig0", "prefix", id="ipconfig-no-prefix"),
    pytest.param({"verify": {"nameserver": "dns.lan"}}, "verify.nameserver", "IP address", id="nameserver"),
    pytest.param({"verify": {"disk_grow": "1G"}}, "verify.disk_grow", "+1G", id="disk-grow"),
    pytest.param({"verify": {"checks_dir": "/nonexistent/checks"}}, "verify.checks_dir", "existing directory",
                 id="checks-dir"),
]


@pytest.mark.parametrize(("raw", "key", "expected"), BAD_INPUTS)
def test_bad_input_names_key_value_and_expectation(raw: dict, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="nixgold.toml")
    message = str(info.value)
    assert f"  - {key}" in message, message
    assert expected in message, message
    assert "nixgold.toml" in message
    assert info.value.exit_code == ExitCode.CONFIG
    assert any(issue.key.startswith(key) for issue in info.value.issues)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"foo": 1, "vm": {"cores": 0, "firmware": "efi"}, "template": {"vmid": 5}})
    keys = {issue.key for issue in info.value.issues}
    assert {"foo", "vm.cores", "vm.firmware", "template.vmid"} <= keys


def test_valid_values_are_accepted() -> None:
    config = parse_config({
        "template": {"vmid": 100, "name": "nixos.golden-1", "tags": ["a+b", "c.d"]},
        "vm": {"disk_size": "1T", "firmware": "bios", "vlan": 42, "disk_type": "virtio"},
        "nixos": {"release": "24.05", "packages": ["python3Packages.requests", "gnome-console"]},
        "iso": {"url": "https://releases.nixos.org/nixos/24.05/x/nixos-minimal-x.iso", "sha256": "a" * 64},
        "users": [{"name": "ops", "ssh_keys": [ED25519]}],
        "verify": {"ipconfig0": "ip=192.168.1.50/24,gw=192.168.1.1", "nameserver": "192.168.1.1"},
    })
    assert config.vm.disk_size_gib == 1024
    assert config.users[0].ssh_keys == (ED25519,)


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "nixgold.toml"
    file.write_text("[vm\ncores = 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(file, env={})
    assert str(file) in str(info.value) and "valid TOML" in str(info.value)


def test_missing_config_file_says_how_to_create_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(None, env={})
    assert "nixgold.example.toml" in str(info.value)


def test_config_file_precedence(tmp_path: Path) -> None:
    cwd_file = tmp_path / "nixgold.toml"
    cwd_file.write_text("")
    env_file = tmp_path / "env.toml"
    env_file.write_text("")
    flag_file = tmp_path / "flag.toml"
    assert find_config_file(None, {}, cwd=tmp_path) == cwd_file
    assert find_config_file(None, {"NIXGOLD_CONFIG": str(env_file)}, cwd=tmp_path) == env_file
    assert find_config_file(flag_file, {"NIXGOLD_CONFIG": str(env_file)}, cwd=tmp_path) == flag_file


def test_flags_override_the_file_and_are_named_in_errors(tmp_path: Path) -> None:
    file = tmp_path / "nixgold.toml"
    file.write_text("[template]\nvmid = 9004\n")
    assert load_config(file, overrides={"template.vmid": 9100}, env={}).template.vmid == 9100
    with pytest.raises(ConfigError) as info:
        load_config(file, overrides={"vm.cores": 0}, env={})
    assert "vm.cores (from flag) = 0" in str(info.value)


def test_parse_override_reads_toml_values() -> None:
    assert parse_override("vm.cores=4") == ("vm.cores", 4)
    assert parse_override("nixos.flakes=false") == ("nixos.flakes", False)
    assert parse_override('template.tags=["a","b"]') == ("template.tags", ["a", "b"])
    assert parse_override("proxmox.node=pve2") == ("proxmox.node", "pve2")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("vm.cores")


def test_credentials_come_from_env_and_win_over_the_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    config = parse_config({"proxmox": {"url": "https://file:8006/api2/json", "token_id": "a@pve!file"}})
    creds = load_credentials(config, {
        "PROXMOX_URL": "https://env:8006/api2/json", "PROXMOX_TOKEN_ID": "b@pve!env",
        "PROXMOX_TOKEN_SECRET": "s3cr3t-uuid", "PROXMOX_CA_BUNDLE": str(ca)})
    assert creds.url == "https://env:8006/api2/json" and creds.token_id == "b@pve!env"
    assert "s3cr3t-uuid" not in repr(creds)
    described = json.dumps(describe_config(config, creds))
    assert "s3cr3t-uuid" not in described and "***" in described
    assert load_credentials(config, {}).url == "https://file:8006/api2/json"


@pytest.mark.parametrize(("env", "key"), [
    ({"PROXMOX_URL": "pve.lan"}, "PROXMOX_URL"),
    ({"PROXMOX_TOKEN_ID": "root@pam"}, "PROXMOX_TOKEN_ID"),
    ({"PROXMOX_USERNAME": "root"}, "PROXMOX_USERNAME"),
    ({"PROXMOX_CA_BUNDLE": "/nonexistent/ca.pem"}, "PROXMOX_CA_BUNDLE"),
])
def test_bad_environment_is_named(env: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_credentials(Config(), env)
    assert key in str(info.value) and "environment" in str(info.value)


def test_a_url_with_credentials_in_the_environment_is_refused_without_showing_it() -> None:
    for url in ("https://root@pam:pw-in-the-url-0@pve.lan:8006/api2/json",
                "https://user:pw-in-the-url-0@pve.lan:8006/api2/json"):
        with pytest.raises(ConfigError) as info:
            load_credentials(Config(), {"PROXMOX_URL": url})
        text = str(info.value)
        assert "PROXMOX_URL" in text and "no user or password in the URL" in text
        assert "pw-in-the-url-0" not in text and "<not shown: the URL holds credentials>" in text


def test_config_hash_is_stable_and_sensitive() -> None:
    assert Config().config_hash() == Config().config_hash()
    assert Config().config_hash() != parse_config({"vm": {"cores": 3}}).config_hash()
    assert parse_config({}, source="a").config_hash() == parse_config({}, source="b").config_hash()


def test_duration_seconds() -> None:
    assert duration_seconds("1m30s") == 90
    assert duration_seconds("20ms") == pytest.approx(0.02)
    assert duration_seconds("1.5h") == 5400
