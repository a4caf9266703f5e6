"""dicomrst.config: DICOM-RST's YAML loads unchanged; every mistake names its key path."""

from __future__ import annotations

import copy
import os
import socket
from typing import Any

import attrs
import yaml
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.config import (
    AetConfig,
    CacheConfig,
    Config,
    ConfigError,
    DimseServerConfig,
    HttpConfig,
    PoolConfig,
    QidoConfig,
    S3Credentials,
    StowConfig,
    WadoConfig,
    config_warnings,
    default_cache_path,
    default_resolver,
    first_run_config,
    load_config,
    parse_config,
)

# DICOM-RST's own sample (src/config/defaults.yaml, examples/simple-setup), verbatim.
SAMPLE = """\
telemetry:
  # sentry: $SENTRY_DSN
  level: INFO
server:
  aet: DICOM-RST
  http:
    interface: 0.0.0.0
    port: 8080
    max-upload-size: 50000000
    request-timeout: 60000
    graceful-shutdown: true
  dimse:
    - aet: DICOM-RST
      interface: 0.0.0.0
      port: 7001
      uncompressed: true
aets:
  - aet: ORTHANC
    host: orthanc
    port: 4242
    backend: DIMSE
    pool:
      size: 16
      timeout: 10000
    qido-rs:
      timeout: 10000
    stow-rs:
      timeout: 10000
    wado-rs:
      timeout: 30000
      mode: concurrent
      receivers:
        - DICOM-RST # see server.dimse
"""

# DICOM-RST's documentation spells the listen address `host`.
DOCS_VARIANT = SAMPLE.replace("interface: 0.0.0.0", "host: 0.0.0.0")

S3_AET = {
    "aet": "RESEARCH",
    "backend": "S3",
    "endpoint": "http://s3.local",
    "bucket": "research",
    "region": "local",
    "concurrency": 32,
    "credentials": {"access-key": "ABC123", "secret-key": "topSecret"},
}


def resolver(*known: str):
    """A resolver that knows only `known`, so no test touches DNS."""
    calls: list[str] = []

    def resolve(host: str) -> object:
        calls.append(host)
        if host not in known:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 0))]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def sample() -> dict[str, Any]:
    return yaml.safe_load(SAMPLE)


def with_aets(*aets: dict[str, Any]) -> dict[str, Any]:
    return {"aets": list(aets)}


def dimse_aet(aet: str = "PACS", **extra: Any) -> dict[str, Any]:
    return {"aet": aet, "host": "pacs", "port": 104, **extra}


def parse(data: object, environ: dict[str, str] | None = None) -> Config:
    return parse_config(data, resolve=resolver("orthanc", "pacs"), environ=environ or {})


class SampleTests(SynchronousTestCase):
    def check_sample(self, config: Config) -> None:
        self.assertEqual(config.telemetry.level, "INFO")
        self.assertIsNone(config.telemetry.sentry)
        self.assertEqual(config.server.aet, "DICOM-RST")
        self.assertEqual(config.server.http, HttpConfig(
            interface="0.0.0.0", port=8080, max_upload_size=50_000_000, request_timeout=60_000,
            graceful_shutdown=True, base_path="/", endpoint=None, header_timeout=20_000))
        self.assertEqual(config.server.dimse, (DimseServerConfig(
            aet="DICOM-RST", interface="0.0.0.0", port=7001, uncompressed=True, endpoint=None,
            idle_timeout=60_000),))
        self.assertEqual(config.aets, (AetConfig(
            aet="ORTHANC", backend="DIMSE", host="orthanc", port=4242,
            pool=PoolConfig(size=16, timeout=10_000, idle_timeout=60_000),
            qido_rs=QidoConfig(timeout=10_000), stow_rs=StowConfig(timeout=10_000),
            wado_rs=WadoConfig(timeout=30_000, mode="concurrent", receivers=("DICOM-RST",),
                               retrieve="move")),))
        self.assertIs(config.aet("ORTHANC"), config.aets[0])
        self.assertIsNone(config.aet("orthanc"))  # AE titles are case-sensitive

    def test_sample(self) -> None:
        resolve = resolver("orthanc")
        self.check_sample(parse_config(sample(), resolve=resolve, environ={}))
        self.assertEqual(resolve.calls, ["orthanc"])  # type: ignore[attr-defined]

    def test_sample_file(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(SAMPLE)
        self.check_sample(load_config(path, resolve=resolver("orthanc"), environ={}))

    def test_docs_variant_with_host(self) -> None:
        self.check_sample(parse_config(yaml.safe_load(DOCS_VARIANT), resolve=resolver("orthanc")))

    def test_s3_aet(self) -> None:
        data = sample()
        data["aets"].append(S3_AET)
        resolve = resolver("orthanc")
        config = parse_config(data, resolve=resolve, environ={})
        s3 = config.aet("RESEARCH")
        assert s3 is not None
        self.assertEqual(
            (s3.backend, s3.endpoint, s3.endpoint_style, s3.bucket, s3.region, s3.concurrency, s3.prefix),
            ("S3", "http://s3.local", "vhost", "research", "local", 32, ""))
        self.assertEqual(s3.credentials, S3Credentials(
            source="static", access_key="ABC123", secret_key="topSecret"))
        self.assertIsNone(s3.host)
        self.assertIsNone(s3.port)
        self.assertEqual(resolve.calls, ["orthanc"])  # type: ignore[attr-defined]  S3 is not resolved
        self.assertNotIn("topSecret", repr(config))
        self.assertIn("ABC123", repr(config))

    def test_frozen(self) -> None:
        config = parse(sample())
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, config.server.http, "port", 1)


class DefaultsTests(SynchronousTestCase):
    def check_defaults(self, config: Config) -> None:
        self.assertEqual(config, Config())
        self.assertEqual(config.telemetry.level, "INFO")
        http = config.server.http
        self.assertEqual((http.interface, http.port, http.max_upload_size, http.request_timeout,
                          http.graceful_shutdown, http.base_path, http.endpoint, http.header_timeout),
                         ("0.0.0.0", 8080, 50_000_000, 60_000, True, "/", None, 20_000))
        self.assertEqual(http.header_timeout_s, 20.0)
        self.assertEqual(config.server.aet, "DICOM-RST")
        self.assertEqual(config.server.dimse, (DimseServerConfig(
            aet="DICOM-RST", interface="0.0.0.0", port=7001, uncompressed=True),))
        self.assertEqual(config.aets, ())

    def test_no_file(self) -> None:
        self.check_defaults(load_config(None, resolve=resolver()))

    def test_empty_file(self) -> None:
        for text in ("", "# nothing but a comment\n", "---\n"):
            path = self.mktemp()
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            self.check_defaults(load_config(path, resolve=resolver()))

    def test_empty_sections(self) -> None:
        # `telemetry:` with every key commented out is YAML null: all defaults.
        self.check_defaults(parse(yaml.safe_load("telemetry:\n  # level: DEBUG\nserver:\n  http:\n")))

    def test_aet_defaults(self) -> None:
        aet = parse(with_aets({"aet": "PACS", "host": "pacs", "port": 104})).aets[0]
        self.assertEqual(aet.backend, "DIMSE")
        self.assertEqual(aet.pool, PoolConfig(size=16, timeout=10_000, idle_timeout=60_000, max_idle=2))
        self.assertEqual(aet.qido_rs.timeout, 30_000)
        self.assertEqual(aet.stow_rs.timeout, 30_000)
        self.assertEqual(aet.mwl_rs.timeout, 30_000)
        self.assertEqual(aet.wado_rs, WadoConfig(timeout=60_000, mode="concurrent", receivers=(),
                                                 retrieve="move"))
        self.assertIsNone(aet.credentials)

    def test_cache_defaults(self) -> None:
        cache = Config().server.cache
        self.assertEqual(cache, CacheConfig(path=None, max_size=2_000_000_000, ttl=300_000))
        self.assertEqual(cache.ttl_s, 300.0)
        directory = cache.directory()
        self.assertEqual(directory, default_cache_path())
        self.assertTrue(os.path.isabs(directory))
        self.assertIn(str(os.geteuid()), os.path.basename(directory))
        self.assertTrue(parse(with_aets(dimse_aet())).aets[0].cache)

    def test_cache_keys(self) -> None:
        data = with_aets(dimse_aet(cache=False), dict(S3_AET, cache=False), dimse_aet("OTHER"))
        data["server"] = {"cache": {"path": "/var/cache/dicomrst", "max-size": 0, "ttl": 60_000}}
        config = parse(data)
        self.assertEqual(config.server.cache, CacheConfig(path="/var/cache/dicomrst", max_size=0, ttl=60_000))
        self.assertEqual(config.server.cache.directory(), "/var/cache/dicomrst")
        self.assertEqual([a.cache for a in config.aets], [False, False, True])
        # `cache:` with every key commented out: all defaults.
        self.assertEqual(parse(yaml.safe_load("server:\n  cache:\n")).server.cache, CacheConfig())

    def test_s3_defaults(self) -> None:
        aet = parse(with_aets({"aet": "S3", "backend": "s3", "endpoint": "https://s3.example",
                               "bucket": "b"})).aets[0]
        self.assertEqual((aet.backend, aet.endpoint_style, aet.region, aet.concurrency, aet.prefix,
                          aet.credentials), ("S3", "vhost", "us-east-1", 32, "", None))

    def test_seconds(self) -> None:
        aet = parse(with_aets(dimse_aet(pool={"timeout": 1500, "idle-timeout": 250},
                                        **{"qido-rs": {"timeout": 2000}})))
        self.assertEqual(aet.server.http.request_timeout_s, 60.0)
        self.assertEqual(aet.aets[0].pool.timeout_s, 1.5)
        self.assertEqual(aet.aets[0].pool.idle_timeout_s, 0.25)
        self.assertEqual(parse(with_aets(dimse_aet(pool={"max-idle": 0}))).aets[0].pool.max_idle, 0)
        listener = parse({"server": {"dimse": [{"idle-timeout": 2500}]}}).server.dimse[0]
        self.assertEqual(listener.idle_timeout_s, 2.5)
        self.assertEqual(aet.aets[0].qido_rs.timeout_s, 2.0)
        self.assertEqual(aet.aets[0].wado_rs.timeout_s, 60.0)
        self.assertEqual(aet.aets[0].stow_rs.timeout_s, 30.0)


class NormalisationTests(SynchronousTestCase):
    def test_case_insensitive_enums(self) -> None:
        config = parse({"telemetry": {"level": "debug"}, "aets": [
            dimse_aet(backend="dimse", **{"wado-rs": {"mode": "Sequential", "retrieve": "GET"}}),
            {"aet": "S3", "backend": "s3", "endpoint": "http://x", "bucket": "b",
             "endpoint-style": "PATH"}]})
        self.assertEqual(config.telemetry.level, "DEBUG")
        self.assertEqual((config.aets[0].backend, config.aets[0].wado_rs.mode,
                          config.aets[0].wado_rs.retrieve), ("DIMSE", "sequential", "get"))
        self.assertEqual((config.aets[1].backend, config.aets[1].endpoint_style), ("S3", "path"))

    def test_level_names(self) -> None:
        for level in ("TRACE", "DEBUG", "INFO", "WARN", "ERROR"):
            self.assertEqual(parse({"telemetry": {"level": level.lower()}}).telemetry.level, level)

    def test_base_path(self) -> None:
        for given, expected in [("", "/"), ("/", "/"), ("dicomweb", "/dicomweb"),
                                ("/dicomweb/", "/dicomweb"), ("a/b/", "/a/b"), ("//x//", "/x")]:
            config = parse({"server": {"http": {"base-path": given}}})
            self.assertEqual(config.server.http.base_path, expected, given)

    def test_ae_title_spaces_not_significant(self) -> None:
        config = parse(with_aets(dimse_aet(" PACS  ")))
        self.assertEqual(config.aets[0].aet, "PACS")

    def test_endpoint_description(self) -> None:
        config = parse({"server": {
            "http": {"interface": "127.0.0.1", "port": 8042},
            "dimse": [{"aet": "A", "port": 11112},
                      {"aet": "B", "host": "::1", "port": 104},
                      {"aet": "C", "endpoint": "systemd:domain=INET:name=dimse"}]}})
        self.assertEqual(config.server.http.endpoint_description(), "tcp:8042:interface=127.0.0.1")
        self.assertEqual([d.endpoint_description() for d in config.server.dimse],
                         ["tcp:11112:interface=0.0.0.0", "tcp:104:interface=\\:\\:1",
                          "systemd:domain=INET:name=dimse"])
        http = parse({"server": {"http": {"endpoint": "ssl:8443:privateKey=k.pem"}}}).server.http
        self.assertEqual(http.endpoint_description(), "ssl:8443:privateKey=k.pem")

    def test_credentials_forms(self) -> None:
        def creds(value: object, environ: dict[str, str] | None = None) -> S3Credentials | None:
            entry = {"aet": "S3", "backend": "S3", "endpoint": "http://x", "bucket": "b",
                     "credentials": value}
            return parse(with_aets(entry), environ).aets[0].credentials

        self.assertIsNone(creds(None))
        self.assertEqual(creds({"chain": True}), S3Credentials(source="chain"))
        fromenv = creds({"access-key-env": "AK", "secret-key-env": "SK"},
                        {"AK": "id", "SK": "envSecret"})
        self.assertEqual(fromenv, S3Credentials(source="env", access_key="id", secret_key="envSecret",
                                                access_key_env="AK", secret_key_env="SK"))
        self.assertNotIn("envSecret", repr(fromenv))

    def test_default_resolver(self) -> None:
        # A numeric address resolves without DNS.
        self.assertTrue(default_resolver("127.0.0.1"))
        config = parse_config(with_aets({"aet": "LOCAL", "host": "127.0.0.1", "port": 104}))
        self.assertEqual(config.aets[0].host, "127.0.0.1")


class ErrorTests(SynchronousTestCase):
    def assertError(self, data: object, path: str, *fragments: str,
                    environ: dict[str, str] | None = None) -> ConfigError:
        try:
            config = parse(data, environ)
        except ConfigError as e:
            self.assertEqual(e.path, path, str(e))
            self.assertTrue(str(e).startswith(f"{path or 'top level'}: "), str(e))
            for fragment in fragments:
                self.assertIn(fragment, str(e))
            return e
        self.fail(f"no ConfigError for {path}; got {config!r}")

    def test_message_format(self) -> None:
        e = self.assertError(with_aets(dimse_aet("A"), dimse_aet("B", port="abc")), "aets[1].port")
        self.assertEqual(str(e), "aets[1].port: expected an integer, got 'abc'")
        self.assertEqual(e.message, "expected an integer, got 'abc'")

    def test_unknown_keys(self) -> None:
        self.assertError({"logging": {}}, "logging", "unknown key")
        self.assertError({"telemetry": {"levle": "INFO"}}, "telemetry.levle", "unknown key")
        e = self.assertError({"server": {"http": {"prot": 80}}}, "server.http.prot")
        self.assertEqual(str(e), "server.http.prot: unknown key")
        self.assertError({"server": {"dimse": [{}, {"aet": "X", "prot": 1}]}}, "server.dimse[1].prot")
        self.assertError(with_aets(dimse_aet(pool={"sise": 1})), "aets[0].pool.sise", "unknown key")
        self.assertError(with_aets(dimse_aet(**{"wado-rs": {"receiver": []}})),
                         "aets[0].wado-rs.receiver", "unknown key")
        self.assertError({1: "x"}, "1", "unknown key")

    def test_keys_of_the_other_backend(self) -> None:
        s3 = dict(S3_AET, pool={"size": 1})
        self.assertError(with_aets(s3), "aets[0].pool", "unknown key for backend S3")
        self.assertError(with_aets(dimse_aet(bucket="b")), "aets[0].bucket", "unknown key for backend DIMSE")

    def test_alias_and_key_together(self) -> None:
        self.assertError({"server": {"http": {"interface": "::", "host": "::"}}},
                         "server.http.host", "give only one")

    def test_wrong_types(self) -> None:
        self.assertError({"server": {"http": {"port": True}}}, "server.http.port",
                         "expected an integer, got true")
        self.assertError({"server": {"http": {"port": 80.0}}}, "server.http.port", "expected an integer")
        self.assertError({"server": {"http": {"graceful-shutdown": "yes please"}}},
                         "server.http.graceful-shutdown", "expected true or false")
        self.assertError({"server": {"aet": 123}}, "server.aet", "AE title", "123")
        self.assertError(with_aets(dimse_aet(False)), "aets[0].aet", "got false")
        self.assertError(with_aets(dimse_aet(host=["a"])), "aets[0].host", "expected a string, got a list")
        self.assertError({"server": "x"}, "server", "expected a mapping, got 'x'")
        self.assertError({"aets": {"aet": "X"}}, "aets", "expected a list, got a mapping")
        self.assertError({"server": {"dimse": [None]}}, "server.dimse[0]", "expected a mapping, got null")
        self.assertError({"aets": [None]}, "aets[0]", "expected a mapping, got null")
        self.assertError(with_aets(dimse_aet(**{"wado-rs": {"receivers": "DICOM-RST"}})),
                         "aets[0].wado-rs.receivers", "expected a list")
        self.assertError({"telemetry": {"sentry": 5}}, "telemetry.sentry", "expected a string")
        self.assertError(with_aets(dimse_aet(host="")), "aets[0].host", "must not be empty")

    def test_top_level_not_a_mapping(self) -> None:
        e = self.assertError(["aets"], "", "expected a mapping, got a list")
        self.assertEqual(str(e), "top level: expected a mapping, got a list")
        self.assertError("aets", "", "expected a mapping")

    def test_ports(self) -> None:
        for port in (0, 65536, -1):
            self.assertError(with_aets(dimse_aet(port=port)), "aets[0].port", "between 1 and 65535")
            self.assertError({"server": {"http": {"port": port}}}, "server.http.port", str(port))
            self.assertError({"server": {"dimse": [{"port": port}]}}, "server.dimse[0].port")
        self.assertEqual(parse(with_aets(dimse_aet(port=65535))).aets[0].port, 65535)

    def test_negative_sizes_and_timeouts(self) -> None:
        self.assertError({"server": {"http": {"max-upload-size": -1}}}, "server.http.max-upload-size",
                         "at least 0, got -1")
        self.assertError({"server": {"http": {"request-timeout": -1}}}, "server.http.request-timeout")
        for bad in (0, -1):
            self.assertError({"server": {"http": {"header-timeout": bad}}}, "server.http.header-timeout",
                             f"at least 1, got {bad}")
        self.assertError({"server": {"http": {"header-timeout": "20s"}}}, "server.http.header-timeout",
                         "expected an integer")
        http = parse({"server": {"http": {"header-timeout": 5000}}}).server.http
        self.assertEqual(http.header_timeout_s, 5.0)
        for section in ("qido-rs", "wado-rs", "stow-rs", "mwl-rs", "pool"):
            self.assertError(with_aets(dimse_aet(**{section: {"timeout": -5}})),
                             f"aets[0].{section}.timeout", "at least 0")
        self.assertError(with_aets(dimse_aet(pool={"idle-timeout": -1})), "aets[0].pool.idle-timeout")
        self.assertError(with_aets(dimse_aet(pool={"max-idle": -1})), "aets[0].pool.max-idle", "at least 0")
        for bad in (0, -1):
            self.assertError({"server": {"dimse": [{"idle-timeout": bad}]}}, "server.dimse[0].idle-timeout",
                             f"at least 1, got {bad}")
        self.assertError({"server": {"dimse": [{}, {"aet": "B", "port": 7002, "idle-timeout": 1.5}]}},
                         "server.dimse[1].idle-timeout", "expected an integer")
        self.assertError(with_aets(dimse_aet(pool={"max-idle": "2"})), "aets[0].pool.max-idle",
                         "expected an integer")
        self.assertError(with_aets(dimse_aet(pool={"size": 0})), "aets[0].pool.size", "at least 1")
        cache = "server.cache.max-size"
        self.assertError({"server": {"cache": {"max-size": -1}}}, cache, "at least 0, got -1")
        self.assertError({"server": {"cache": {"max-size": "2GB"}}}, cache, "expected an integer")
        self.assertError({"server": {"cache": {"ttl": -1}}}, "server.cache.ttl", "at least 0, got -1")
        self.assertError({"server": {"cache": {"path": ""}}}, "server.cache.path", "must not be empty")
        self.assertError({"server": {"cache": {"path": 5}}}, "server.cache.path", "expected a string")
        self.assertError({"server": {"cache": {"size": 5}}}, "server.cache.size", "unknown key")
        self.assertError(with_aets(dimse_aet(cache="no")), "aets[0].cache", "expected true or false")
        self.assertError(with_aets(dict(S3_AET, concurrency=0)), "aets[0].concurrency", "at least 1")

    def test_ae_titles(self) -> None:
        for title, problem in [("", "empty"), ("    ", "all spaces"), ("A" * 17, "longer than 16"),
                               ("A\\B", "backslash"), ("A\tB", "control"), ("A\x00", "control"),
                               ("ÄRZTE", "ASCII")]:
            self.assertError(with_aets(dimse_aet(title)), "aets[0].aet", problem)
            self.assertError({"server": {"aet": title}}, "server.aet", problem)
            self.assertError({"server": {"dimse": [{"aet": title}]}}, "server.dimse[0].aet", problem)
            self.assertError(with_aets(dimse_aet(**{"wado-rs": {"receivers": ["DICOM-RST", title]}})),
                             "aets[0].wado-rs.receivers[1]", problem)
        self.assertEqual(parse(with_aets(dimse_aet("A" * 16))).aets[0].aet, "A" * 16)

    def test_duplicate_aets(self) -> None:
        e = self.assertError(with_aets(dimse_aet("ORTHANC"), dimse_aet("OTHER"), dimse_aet("ORTHANC")),
                             "aets[2].aet")
        self.assertEqual(str(e), "aets[2].aet: duplicate AET 'ORTHANC' (also aets[0])")
        self.assertError(with_aets(dimse_aet("ORTHANC"), dimse_aet("ORTHANC ")), "aets[1].aet",
                         "duplicate AET")
        self.assertError(with_aets(dimse_aet("ORTHANC"), dict(S3_AET, aet="ORTHANC")), "aets[1].aet",
                         "also aets[0]")
        self.assertError({"server": {"dimse": [{"aet": "A", "port": 1}, {"aet": "A", "port": 2}]}},
                         "server.dimse[1].aet", "duplicate AET 'A' (also server.dimse[0])")

    def test_unknown_receiver(self) -> None:
        self.assertError(with_aets(dimse_aet(**{"wado-rs": {"receivers": ["DICOM-RST", "STORESCP"]}})),
                         "aets[0].wado-rs.receivers[1]", "'STORESCP'", "server.dimse", "DICOM-RST")
        data = {"server": {"dimse": []}, "aets": [dimse_aet(**{"wado-rs": {"receivers": ["DICOM-RST"]}})]}
        self.assertError(data, "aets[0].wado-rs.receivers[0]", "none configured")

    def test_unresolvable_host(self) -> None:
        self.assertError(with_aets(dimse_aet(), dimse_aet("B", host="no-such-pacs")), "aets[1].host",
                         "cannot resolve 'no-such-pacs'", "Name or service not known")

    def test_move_senders(self) -> None:
        # Without wado-rs.senders, the PACS itself: its AE title, calling from its host.
        self.assertEqual(parse(with_aets(dimse_aet())).aets[0].move_senders(), (("PACS", "pacs"),))
        senders = [{"aet": "PYSTORE"}, {"host": "10.1.0.0/16"}, {"aet": "ARCHIVE", "host": "orthanc"}]
        aet = parse(with_aets(dimse_aet(**{"wado-rs": {"senders": senders}}))).aets[0]
        self.assertEqual(aet.move_senders(),
                         (("PYSTORE", "pacs"), ("PACS", "10.1.0.0/16"), ("ARCHIVE", "orthanc")))

    def test_move_sender_errors(self) -> None:
        def senders(*entries: Any) -> dict[str, Any]:
            return with_aets(dimse_aet(**{"wado-rs": {"senders": list(entries)}}))

        self.assertError(senders({"host": "no-such-node"}), "aets[0].wado-rs.senders[0].host",
                         "cannot resolve 'no-such-node'")
        self.assertError(senders({}, {"aet": "A\\B"}), "aets[0].wado-rs.senders[1].aet", "backslash")
        self.assertError(senders({"port": 104}), "aets[0].wado-rs.senders[0].port", "unknown key")
        self.assertError(senders(None), "aets[0].wado-rs.senders[0]", "expected a mapping")
        self.assertError(with_aets(dimse_aet(**{"wado-rs": {"senders": "PACS"}})), "aets[0].wado-rs.senders",
                         "expected a list")
        # Addresses and networks are not looked up.
        calls = []
        data = senders({"host": "192.0.2.7"}, {"host": "2001:db8::/32"})
        parse_config(data, resolve=lambda host: calls.append(host), environ={})
        self.assertEqual(calls, ["pacs"])

    def test_dns_only_after_other_checks(self) -> None:
        def refuse(host: str) -> object:
            raise AssertionError("resolver called")

        data = with_aets(dimse_aet("A", host="x"), dimse_aet("A", host="y"))
        e = self.assertRaises(ConfigError, parse_config, data, resolve=refuse, environ={})
        self.assertEqual(e.path, "aets[1].aet")

    def test_missing_required(self) -> None:
        self.assertError(with_aets({"host": "pacs", "port": 104}), "aets[0].aet", "missing required key")
        self.assertError(with_aets({"aet": "PACS", "port": 104}), "aets[0].host",
                         "missing required key for backend DIMSE")
        self.assertError(with_aets({"aet": "PACS", "host": "pacs"}), "aets[0].port", "missing")
        s3 = {"aet": "S3", "backend": "S3", "bucket": "b"}
        self.assertError(with_aets(s3), "aets[0].endpoint", "missing required key for backend S3")
        s3 = {"aet": "S3", "backend": "S3", "endpoint": "http://x"}
        self.assertError(with_aets(s3), "aets[0].bucket", "missing required key for backend S3")

    def test_enums(self) -> None:
        self.assertError(with_aets(dimse_aet(backend="FTP")), "aets[0].backend",
                         "expected one of DIMSE, S3, LOCAL, got 'FTP'")
        self.assertError(with_aets(dimse_aet(**{"wado-rs": {"mode": "parallel"}})), "aets[0].wado-rs.mode",
                         "concurrent, sequential")
        self.assertError(with_aets(dimse_aet(**{"wado-rs": {"retrieve": "store"}})),
                         "aets[0].wado-rs.retrieve", "move, get")
        self.assertError(with_aets(dict(S3_AET, **{"endpoint-style": "virtual"})), "aets[0].endpoint-style",
                         "path, vhost")
        self.assertError({"telemetry": {"level": "LOUD"}}, "telemetry.level",
                         "TRACE, DEBUG, INFO, WARN, ERROR")

    def test_s3_endpoint_and_base_path(self) -> None:
        for url in ("s3.local", "ftp://s3.local", "http://", "http://[::1"):
            self.assertError(with_aets(dict(S3_AET, endpoint=url)), "aets[0].endpoint", "http://")
        self.assertError({"server": {"http": {"base-path": "/a?b"}}}, "server.http.base-path", "'?'")

    def test_credentials(self) -> None:
        def s3(credentials: object) -> dict[str, Any]:
            return with_aets(dict(S3_AET, credentials=credentials))

        both = {"access-key": "A", "secret-key": "S", "access-key-env": "AK", "secret-key-env": "SK"}
        self.assertError(s3(both), "aets[0].credentials", "exactly one", "more than one")
        self.assertError(s3({"access-key": "A", "secret-key": "S", "chain": True}), "aets[0].credentials",
                         "more than one")
        self.assertError(s3({}), "aets[0].credentials", "exactly one", "anonymous")
        self.assertError(s3({"chain": False}), "aets[0].credentials", "exactly one")
        self.assertError(s3({"access-key": "A"}), "aets[0].credentials.secret-key",
                         "missing (access-key is given")
        self.assertError(s3({"secret-key-env": "SK"}), "aets[0].credentials.access-key-env", "missing")
        self.assertError(s3({"access-key-env": "AK", "secret-key-env": "SK"}),
                         "aets[0].credentials.secret-key-env", "'SK' is not set",
                         environ={"AK": "id"})
        self.assertError(s3({"access-key-env": "AK", "secret-key-env": "SK"}),
                         "aets[0].credentials.access-key-env", "'AK' is empty",
                         environ={"AK": "", "SK": "x"})
        self.assertError(s3({"access-key": "A", "secret": "S"}), "aets[0].credentials.secret", "unknown key")
        self.assertError(s3("ABC123:topSecret"), "aets[0].credentials", "expected a mapping")

    def test_secrets_never_in_messages(self) -> None:
        e = self.assertError(with_aets(dict(S3_AET, credentials={"access-key": "A", "secret-key": 98765})),
                             "aets[0].credentials.secret-key", "expected a string")
        self.assertNotIn("98765", str(e))
        e = self.assertError(with_aets(dict(S3_AET, credentials={"secret-key": "topSecret"})),
                             "aets[0].credentials.access-key", "missing")
        self.assertNotIn("topSecret", str(e))

    def test_input_not_mutated(self) -> None:
        data = sample()
        before = copy.deepcopy(data)
        parse(data)
        self.assertEqual(data, before)


class FileTests(SynchronousTestCase):
    def write(self, text: str | bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        return path

    def test_yaml_syntax_error(self) -> None:
        path = self.write("server:\n  http:\n    port: 8080\n   bad: [\n")
        e = self.assertRaises(ConfigError, load_config, path, resolve=resolver())
        self.assertTrue(str(e).startswith(f"{path}:"), str(e))
        self.assertIn("invalid YAML", str(e))
        self.assertEqual(e.file, path)
        self.assertIsInstance(e.line, int)
        self.assertIn(f"{path}:{e.line}:", str(e))

    def test_duplicate_yaml_key(self) -> None:
        path = self.write("server:\n  http:\n    port: 8080\n    port: 9090\n")
        e = self.assertRaises(ConfigError, load_config, path, resolve=resolver())
        self.assertEqual(e.line, 4)
        self.assertIn("duplicate key 'port'", str(e))

    def test_yaml_merge_keys_still_work(self) -> None:
        # A key that overrides one merged in by `<<:` is not a duplicate.
        text = ("server:\n  http: &http {port: 8081, interface: 127.0.0.1}\n"
                "  dimse:\n    - {<<: *http, port: 11112, aet: A}\n")
        config = load_config(self.write(text), resolve=resolver())
        self.assertEqual(config.server.dimse[0].port, 11112)
        self.assertEqual(config.server.dimse[0].interface, "127.0.0.1")

    def test_missing_file(self) -> None:
        path = self.mktemp()
        e = self.assertRaises(ConfigError, load_config, path, resolve=resolver())
        self.assertEqual(e.path, path)
        self.assertIn("cannot read config file", str(e))
        self.assertIn(path, str(e))

    def test_directory(self) -> None:
        path = self.mktemp()
        os.mkdir(path)
        e = self.assertRaises(ConfigError, load_config, path, resolve=resolver())
        self.assertTrue(str(e).startswith(f"{path}: cannot read config file"), str(e))

    def test_not_utf8(self) -> None:
        e = self.assertRaises(ConfigError, load_config, self.write(b"server:\n  aet: \xff\n"),
                              resolve=resolver())
        self.assertIn("UTF-8", str(e))

    def test_top_level_list(self) -> None:
        e = self.assertRaises(ConfigError, load_config, self.write("- a\n- b\n"), resolve=resolver())
        self.assertEqual(str(e), "top level: expected a mapping, got a list")

    def test_key_error_names_file(self) -> None:
        path = self.write("server:\n  http:\n    prot: 8080\n")
        e = self.assertRaises(ConfigError, load_config, path, resolve=resolver())
        self.assertEqual(str(e), "server.http.prot: unknown key")
        self.assertEqual(e.file, path)


class URLTitleTests(SynchronousTestCase):
    """aets[].aet is the URL segment /aets/{aet}: a title a URL cannot carry as it is
    (a space, '/') is an error naming the key (issue 11)."""

    def test_titles_a_url_cannot_carry(self) -> None:
        for title in ("MY PACS", "A/B", "A?B", "A#B", "A%20B", 'A"B', "A<B", "A|B", "A{B"):
            self.assertError(with_aets(dimse_aet(title)), "aets[0].aet", "URL segment /aets/{aet}")
        for title in ("ORTHANC", "DICOM-RST", "A.B_C~D", "PACS:1", "A+B", "A=B@C"):
            self.assertEqual(parse(with_aets(dimse_aet(title))).aets[0].aet, title)

    def test_listener_and_calling_titles_are_not_urls(self) -> None:
        config = parse({"server": {"aet": "MY PACS", "dimse": [{"aet": "A/B"}]}})
        self.assertEqual((config.server.aet, config.server.dimse[0].aet), ("MY PACS", "A/B"))

    def assertError(self, data: object, path: str, *fragments: str) -> ConfigError:
        with self.assertRaises(ConfigError) as e:
            parse(data)
        self.assertEqual(e.exception.path, path)
        for fragment in fragments:
            self.assertIn(fragment, e.exception.message)
        return e.exception


class WarningTests(SynchronousTestCase):
    def test_a_sound_config_has_none(self) -> None:
        self.assertEqual(config_warnings(parse(sample())), [])
        self.assertEqual(config_warnings(Config()), [])

    def test_request_timeout_in_seconds_as_dicom_rst_reads_it(self) -> None:
        [warning] = config_warnings(parse({"server": {"http": {"request-timeout": 60}}}))
        self.assertEqual(
            warning,
            "server.http.request-timeout is 60 ms: dicomrst reads it in milliseconds, DICOM-RST's code "
            "in seconds; for 60 seconds write 60000",
        )
        no_deadline = parse({"server": {"http": {"request-timeout": 0}}})
        self.assertEqual(config_warnings(no_deadline), [])

    def test_other_times_below_a_second(self) -> None:
        data = with_aets(dimse_aet(**{"qido-rs": {"timeout": 30}, "pool": {"idle-timeout": 0}}), dict(S3_AET))
        data["server"] = {"http": {"header-timeout": 20}}
        self.assertEqual(
            config_warnings(parse(data)),
            [
                "server.http.header-timeout is 20 ms: times are in milliseconds (as in DICOM-RST's files); "
                "for 20 seconds write 20000",
                "aets[0].pool.idle-timeout is 0 ms: times are in milliseconds (as in DICOM-RST's files); "
                "0 leaves no time at all",
                "aets[0].qido-rs.timeout is 30 ms: times are in milliseconds (as in DICOM-RST's files); "
                "for 30 seconds write 30000",
            ],
        )

    def test_cache_ttl_below_a_second(self) -> None:
        [warning] = config_warnings(parse({"server": {"cache": {"ttl": 300}}}))
        self.assertTrue(warning.startswith("server.cache.ttl is 300 ms: times are in milliseconds"), warning)

    def test_sentry_does_nothing(self) -> None:
        [warning] = config_warnings(parse({"telemetry": {"sentry": "https://key@sentry.example/1"}}))
        self.assertIn("telemetry.sentry is set, but dicomrst does not report to Sentry", warning)
        self.assertNotIn("key@", warning)


LOCAL_AET = {"aet": "ARCHIVE", "backend": "LOCAL", "path": "/srv/dicom"}


class LocalAndStoreToTests(SynchronousTestCase):
    """``backend: LOCAL`` and listeners with ``store-to`` / ``allowed-callers``."""

    assertError = ErrorTests.assertError

    def test_local_aet(self) -> None:
        config = parse(with_aets(dict(LOCAL_AET, backend="local", cache=False)))
        [aet] = config.aets
        self.assertEqual((aet.backend, aet.path, aet.cache, aet.host), ("LOCAL", "/srv/dicom", False, None))

    def test_local_needs_a_path_and_takes_no_other_backends_keys(self) -> None:
        self.assertError(with_aets({"aet": "A", "backend": "LOCAL"}), "aets[0].path",
                         "missing required key for backend LOCAL")
        other = "unknown key for backend LOCAL"
        self.assertError(with_aets(dict(LOCAL_AET, host="pacs")), "aets[0].host", other)
        self.assertError(with_aets(dict(LOCAL_AET, bucket="b")), "aets[0].bucket", other)
        self.assertError(with_aets(dimse_aet(path="/x")), "aets[0].path", "unknown key for backend DIMSE")
        self.assertError(with_aets(dict(S3_AET, path="/x")), "aets[0].path", "unknown key for backend S3")

    def test_store_to(self) -> None:
        data = with_aets(LOCAL_AET, S3_AET, dimse_aet())
        data["server"] = {"dimse": [{"aet": "IN", "store-to": "ARCHIVE", "allowed-callers": ["CT1", "MR1 "]},
                                    {"aet": "IN2", "store-to": S3_AET["aet"]}]}
        listeners = parse(data).server.dimse
        self.assertEqual((listeners[0].store_to, listeners[0].allowed_callers), ("ARCHIVE", ("CT1", "MR1")))
        self.assertEqual((listeners[1].store_to, listeners[1].allowed_callers), (S3_AET["aet"], ()))

    def test_store_to_must_name_an_archive(self) -> None:
        data = with_aets(LOCAL_AET, dimse_aet())
        data["server"] = {"dimse": [{"aet": "IN", "store-to": "PACS"}]}
        self.assertError(data, "server.dimse[0].store-to", "'PACS' names a DIMSE AET", "LOCAL or S3")
        data["server"] = {"dimse": [{"aet": "IN", "store-to": "NOPE"}]}
        self.assertError(data, "server.dimse[0].store-to", "names no aets[].aet")

    def test_a_store_to_listener_is_no_move_destination(self) -> None:
        data = with_aets(LOCAL_AET, dimse_aet(**{"wado-rs": {"receivers": ["IN"]}}))
        data["server"] = {"dimse": [{"aet": "IN", "store-to": "ARCHIVE"}]}
        self.assertError(data, "aets[1].wado-rs.receivers[0]", "stores into ARCHIVE")


class TlsTests(SynchronousTestCase):
    """``server.http.tls``, ``server.dimse[].tls`` and ``aets[].tls``: the keys and their
    combinations (the files are read where the listeners and pools are built: test_tls)."""

    assertError = ErrorTests.assertError

    def test_listener_blocks(self) -> None:
        config = parse({"server": {
            "http": {"tls": {"cert": "c.pem", "key": "k.pem"}},
            "dimse": [{"aet": "IN", "tls": {"cert": "c.pem", "key": "k.pem", "ca": "ca.pem"}},
                      {"aet": "IN2", "tls": {"cert": "c.pem", "key": "k.pem", "ca": "ca.pem",
                                             "require-client-cert": False}}],
        }})
        http = config.server.http.tls
        assert http is not None
        self.assertEqual((http.cert, http.key, http.ca, http.client_cert_required),
                         ("c.pem", "k.pem", None, False))
        required, optional = (d.tls for d in config.server.dimse)
        assert required is not None and optional is not None
        self.assertEqual((required.ca, required.client_cert_required), ("ca.pem", True))
        self.assertEqual((optional.ca, optional.client_cert_required), ("ca.pem", False))
        self.assertIsNone(parse({}).server.http.tls)
        self.assertIsNone(parse({}).server.dimse[0].tls)

    def test_pacs_block(self) -> None:
        [aet] = parse(with_aets(dimse_aet(tls={"ca": "ca.pem", "cert": "c.pem", "key": "k.pem"}))).aets
        assert aet.tls is not None
        self.assertEqual((aet.tls.ca, aet.tls.cert, aet.tls.key, aet.tls.check_hostname),
                         ("ca.pem", "c.pem", "k.pem", True))
        [aet] = parse(with_aets(dimse_aet(tls={"ca": "ca.pem", "check-hostname": False}))).aets
        assert aet.tls is not None
        self.assertEqual((aet.tls.cert, aet.tls.check_hostname), (None, False))

    def test_errors(self) -> None:
        self.assertError({"server": {"http": {"tls": {"key": "k.pem"}}}}, "server.http.tls.cert",
                         "missing required key")
        self.assertError({"server": {"dimse": [{"tls": {"cert": "c.pem"}}]}}, "server.dimse[0].tls.key",
                         "missing required key")
        required = {"cert": "c", "key": "k", "require-client-cert": True}
        self.assertError({"server": {"http": {"tls": required}}}, "server.http.tls.require-client-cert",
                         "needs ca")
        self.assertError({"server": {"http": {"tls": {"cert": "c", "key": "k", "verify": True}}}},
                         "server.http.tls.verify", "unknown key")
        self.assertError({"server": {"http": {"tls": "yes"}}}, "server.http.tls", "expected a mapping")
        self.assertError({"server": {"http": {"endpoint": "ssl:8443:privateKey=k:certKey=c",
                                              "tls": {"cert": "c", "key": "k"}}}},
                         "server.http.tls", "ssl:", "not both")
        self.assertError(with_aets(dimse_aet(tls={"cert": "c.pem", "key": "k.pem"})), "aets[0].tls.ca",
                         "missing required key")
        self.assertError(with_aets(dimse_aet(tls={"ca": "ca.pem", "cert": "c.pem"})), "aets[0].tls.key",
                         "missing (cert is given; both are needed)")
        self.assertError(with_aets(dimse_aet(tls={"ca": "ca.pem", "key": "k.pem"})), "aets[0].tls.cert",
                         "missing (key is given")
        self.assertError(with_aets(dict(LOCAL_AET, tls={"ca": "ca.pem"})), "aets[0].tls",
                         "unknown key for backend LOCAL")

    def test_environment(self) -> None:
        config = parse(with_aets(dimse_aet(tls={"ca": "ca.pem"})),
                       {"DICOM_RST_AETS_0_TLS_CA": "/etc/pacs-ca.pem",
                        "DICOM_RST_SERVER_HTTP_TLS_CERT": "c.pem", "DICOM_RST_SERVER_HTTP_TLS_KEY": "k.pem"})
        assert config.aets[0].tls is not None and config.server.http.tls is not None
        self.assertEqual((config.aets[0].tls.ca, config.server.http.tls.cert), ("/etc/pacs-ca.pem", "c.pem"))


class EnvironmentTests(SynchronousTestCase):
    """``DICOM_RST_`` + the key path in upper case, ``_`` for ``.`` and ``-``, over the file
    and the defaults; list entries as ``AETS[0]`` (DICOM-RST's form) or ``AETS_0``."""

    assertError = ErrorTests.assertError

    def test_over_the_defaults_and_the_file(self) -> None:
        config = parse(None, {"DICOM_RST_SERVER_HTTP_PORT": "18081"})
        self.assertEqual(config.server.http.port, 18081)
        config = parse({"server": {"http": {"port": 9000, "interface": "127.0.0.1"}}},
                       {"DICOM_RST_SERVER_HTTP_PORT": "18081"})
        self.assertEqual((config.server.http.port, config.server.http.interface), (18081, "127.0.0.1"))

    def test_underscore_stands_for_dot_and_dash_and_case_does_not_matter(self) -> None:
        config = parse(None, {"DICOM_RST_SERVER_HTTP_MAX_UPLOAD_SIZE": "1000",
                              "dicom_rst_server_http_base-path": "/dicomweb",
                              "DICOM_RST_TELEMETRY_LEVEL": "debug"})
        self.assertEqual(config.server.http.max_upload_size, 1000)
        self.assertEqual(config.server.http.base_path, "/dicomweb")
        self.assertEqual(config.telemetry.level, "DEBUG")

    def test_values_are_yaml_scalars(self) -> None:
        config = parse(None, {"DICOM_RST_SERVER_HTTP_GRACEFUL_SHUTDOWN": "false",
                              "DICOM_RST_SERVER_AET": "'1234'",
                              "DICOM_RST_SERVER_HTTP_BASE_PATH": ""})
        self.assertEqual((config.server.http.graceful_shutdown, config.server.aet), (False, "1234"))
        self.assertEqual(config.server.http.base_path, "/")

    def test_list_entries(self) -> None:
        data = with_aets(dimse_aet("A"), dimse_aet("B"))
        config = parse(data, {"DICOM_RST_AETS[1]_PORT": "11112", "DICOM_RST_AETS_0_POOL_SIZE": "3",
                              "DICOM_RST_AETS[-1]_AET": "LAST"})
        self.assertEqual([(a.aet, a.port, a.pool.size) for a in config.aets],
                         [("A", 104, 3), ("LAST", 11112, 16)])

    def test_new_entries_in_index_order_and_the_default_listener(self) -> None:
        config = parse(None, {"DICOM_RST_AETS_0_AET": "ARCHIVE", "DICOM_RST_AETS_0_BACKEND": "LOCAL",
                              "DICOM_RST_AETS_0_PATH": "/srv/dicom",
                              "DICOM_RST_SERVER_DIMSE_0_STORE_TO": "ARCHIVE",
                              "DICOM_RST_SERVER_DIMSE_0_ALLOWED_CALLERS": "[CT1, MR1]"})
        [aet] = config.aets
        [listener] = config.server.dimse
        self.assertEqual((aet.aet, aet.backend, aet.path), ("ARCHIVE", "LOCAL", "/srv/dicom"))
        self.assertEqual((listener.aet, listener.port, listener.store_to, listener.allowed_callers),
                         ("DICOM-RST", 7001, "ARCHIVE", ("CT1", "MR1")))
        gap = {"DICOM_RST_AETS_1_AET": "X"}
        self.assertError(None, "DICOM_RST_AETS_1_AET", "aets has 0 entries", environ=gap)

    def test_an_alias_in_the_file_is_overridden_not_doubled(self) -> None:
        data = {"server": {"http": {"host": "127.0.0.1"}}}
        config = parse(data, {"DICOM_RST_SERVER_HTTP_INTERFACE": "::1"})
        self.assertEqual(config.server.http.interface, "::1")

    def test_unknown_key_names_the_variable(self) -> None:
        for name in ("DICOM_RST_SERVER_HTTP_PROT", "DICOM_RST_SERVER_HTTP", "DICOM_RST_AETS",
                     "DICOM_RST_SERVER_HTTP_PORT[0]", "DICOM_RST_SERVER.HTTP.PORT"):
            self.assertError(None, name, "names no configuration key", environ={name: "1"})

    def test_a_bad_value_names_the_key_and_the_variable(self) -> None:
        e = self.assertError(None, "server.http.port", environ={"DICOM_RST_SERVER_HTTP_PORT": "0"})
        self.assertEqual(str(e), "server.http.port: must be between 1 and 65535, got 0 "
                                 "(set by DICOM_RST_SERVER_HTTP_PORT)")
        self.assertError(None, "DICOM_RST_SERVER_AET", "not a YAML value",
                         environ={"DICOM_RST_SERVER_AET": "[unclosed"})

    def test_other_variables_are_left_alone(self) -> None:
        config = parse(None, {"DICOM_RSTX": "1", "HOME": "/root", "DICOM_RST": "1"})
        self.assertEqual(config, parse(None))


class FirstRunTests(SynchronousTestCase):
    def test_a_local_archive_on_loopback(self) -> None:
        config = first_run_config(resolver(), {})
        [aet] = config.aets
        [listener] = config.server.dimse
        self.assertEqual((aet.aet, aet.backend, aet.path), ("LOCAL", "LOCAL", "dicomrst-data/objects"))
        self.assertEqual((config.server.http.interface, config.server.http.port), ("127.0.0.1", 8080))
        got = (listener.aet, listener.interface, listener.port, listener.store_to, listener.uncompressed)
        self.assertEqual(got, ("DICOMRST", "127.0.0.1", 11112, "LOCAL", False))

    def test_the_environment_applies(self) -> None:
        config = first_run_config(resolver(), {"DICOM_RST_SERVER_HTTP_PORT": "18081",
                                               "DICOM_RST_AETS_0_PATH": "/srv/archive"})
        self.assertEqual((config.server.http.port, config.aets[0].path), (18081, "/srv/archive"))
