"""Unit tests of the harness's parsing and config generation (no load, no processes)."""

import json
import os
import subprocess
import tempfile
import unittest

import harness

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8080/small
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  300.00us   5.00ms   90.00%
    Req/Sec    41.00k     1.00k   43.00k    70.00%
  410123 requests in 10.00s, 60.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  41012.30
Transfer/sec:      6.00MB
"""


class ParsingTest(unittest.TestCase):
    def test_wrk_output(self):
        r = harness.parse_wrk(WRK_OUTPUT)
        self.assertEqual(r["requests"], 410123)
        self.assertAlmostEqual(r["rps"], 41012.30)
        self.assertEqual(r["errors"], 7)
        self.assertEqual(r["socket_errors"] + r["non2xx"], 7)

    def test_wrk_clean_output_has_no_errors(self):
        clean = "\n".join(l for l in WRK_OUTPUT.splitlines() if "errors" not in l and "Non-2xx" not in l)
        self.assertEqual(harness.parse_wrk(clean)["errors"], 0)

    def test_not_wrk_output_is_an_error(self):
        with self.assertRaises(ValueError):
            harness.parse_wrk("wrk: command not found")

    def test_proc_stat_with_spaces_in_the_command(self):
        fields = ["S"] + ["0"] * 10 + ["250", "50"] + ["0"] * 30
        stat = "1234 (nginx: worker process) " + " ".join(fields)
        self.assertEqual(harness.parse_proc_stat(stat), 300)

    def test_proc_stat_of_this_process(self):
        with open("/proc/self/stat") as f:
            self.assertGreaterEqual(harness.parse_proc_stat(f.read()), 0)

    def test_status_memory(self):
        status = "Name:\tx\nVmHWM:\t   12345 kB\nVmRSS:\t    2048 kB\n"
        self.assertEqual(harness.parse_status_kb(status, "VmHWM"), 12345)
        self.assertEqual(harness.parse_status_kb(status, "VmRSS"), 2048)
        self.assertEqual(harness.parse_status_kb(status, "VmSwap"), 0)

    def test_summary_is_median_and_range(self):
        s = harness.summarize([30.0, 10.0, 20.0])
        self.assertEqual((s["median"], s["min"], s["max"], s["n"]), (20.0, 10.0, 30.0, 3))


OHA_JSON = """{"summary": {"successRate": 1.0, "total": 8.0, "requestsPerSec": 9999.5},
 "latencyPercentiles": {"p10": 0.0001, "p50": 0.00025, "p99": 0.0012, "p99.9": 0.004},
 "statusCodeDistribution": {"200": 79990, "502": 3}, "errorDistribution": {"connection closed": 2, "aborted due to deadline": 7}}"""


class OhaTest(unittest.TestCase):
    def test_oha_json(self):
        r = harness.parse_oha(OHA_JSON)
        self.assertAlmostEqual(r["p50_ms"], 0.25)
        self.assertAlmostEqual(r["p99_ms"], 1.2)
        self.assertAlmostEqual(r["p999_ms"], 4.0)
        self.assertAlmostEqual(r["rps"], 9999.5)
        self.assertEqual(r["errors"], 5)
        self.assertEqual(r["requests"], 79993)
        self.assertEqual(r["error_kinds"], {"status 502": 3, "connection closed": 2})

    def test_stub_status_requests(self):
        page = "Active connections: 1 \nserver accepts handled requests\n 16 16 3107 \nReading: 0 Writing: 1 Waiting: 0 \n"
        self.assertEqual(harness.parse_stub_status(page), 3107)
        with self.assertRaises(ValueError):
            harness.parse_stub_status("<html>404</html>")

    def test_every_peer_has_the_same_usage_plan(self):
        with tempfile.TemporaryDirectory() as d:
            n = harness.nginx_conf(1000, 2000, d, access_log=False)
            h = harness.haproxy_conf(1001, 2000, d, access_log=False)
            s = harness.seawall_conf(1002, 1003, 2000, access_log=False, workdir=d)
        rate = harness.THROTTLE_RATE
        self.assertIn(f"limit_req_zone $server_port zone=plan:1m rate={rate}r/s", n)
        self.assertIn(f"burst={rate} nodelay", n)
        self.assertIn(f"sc_http_req_rate(0) gt {rate}", h)
        self.assertIn(f"requests_per_sec: {rate}, burst: {rate}", s)

    def test_plot_script_has_a_line_per_peer_and_percentile(self):
        script = harness.gnuplot_script("d.dat", "o.svg", ["seawall", "nginx"])
        self.assertEqual(script.count("linespoints"), 6)
        self.assertIn("set output 'o.svg'", script)


class ConfigTest(unittest.TestCase):
    def test_peer_configs_match_each_other(self):
        with tempfile.TemporaryDirectory() as d:
            n = harness.nginx_conf(1000, 2000, d, access_log=False)
            h = harness.haproxy_conf(1001, 2000, d, access_log=False)
            s = harness.seawall_conf(1002, 1003, 2000, access_log=False, workdir=d)
        for text, needle in [(n, "127.0.0.1:2000"), (h, "127.0.0.1:2000"), (s, "127.0.0.1:2000")]:
            self.assertIn(needle, text)
        self.assertIn("worker_processes 1", n)
        self.assertIn("keepalive 1024", n)
        self.assertIn("access_log off", n)
        self.assertIn("nbthread 1", h)
        self.assertIn("http-reuse always", h)
        self.assertIn("no log", h)
        self.assertIn("threads: 1", s)
        self.assertIn("access_log: false", s)

    def test_access_logs_switch_on_for_every_peer(self):
        with tempfile.TemporaryDirectory() as d:
            self.assertIn("nginx-access.log", harness.nginx_conf(1, 2, d, access_log=True))
            self.assertIn("option httplog", harness.haproxy_conf(1, 2, d, access_log=True))
            self.assertIn("access_log: true", harness.seawall_conf(1, 3, 2, access_log=True))

    def test_post_body_has_the_requested_size(self):
        script = harness.wrk_post_script(2048)
        body = script.split("wrk.body = '")[1].split("'\n")[0]
        self.assertEqual(len(body), 2048)
        self.assertIn('"POST"', script)

    def test_jwt_is_rs256_with_the_claims_peers_check(self):
        import base64
        with tempfile.TemporaryDirectory() as d:
            token = harness.make_jwt(d, lifetime_secs=60)
            self.assertTrue(os.path.exists(os.path.join(d, "jwt.pub.pem")))
        header, payload, signature = token.split(".")
        pad = lambda s: s + "=" * (-len(s) % 4)
        self.assertEqual(json.loads(base64.urlsafe_b64decode(pad(header)))["alg"], "RS256")
        claims = json.loads(base64.urlsafe_b64decode(pad(payload)))
        self.assertEqual(claims["iss"], harness.JWT_ISSUER)
        self.assertEqual(claims["aud"], harness.JWT_AUDIENCE)
        self.assertEqual(len(base64.urlsafe_b64decode(pad(signature))), 256)

    def test_every_scenario_has_a_backend_location(self):
        with tempfile.TemporaryDirectory() as d:
            conf = harness.backend_nginx_conf(1, d)
        for s in harness.SCENARIOS:
            if s.backend_path == "":
                continue
            self.assertIn(f"location = {s.backend_path or s.path} ", conf, s.name)

    def test_bare_pingora_runs_only_what_it_can_serve(self):
        by_name = {s.name: s for s in harness.SCENARIOS}
        ran = {s.name for s in harness.SCENARIOS if harness.runs_scenario("pingora", s)}
        self.assertEqual(ran, set(harness.BARE_PINGORA_SCENARIOS))
        for name in ran:
            s = by_name[name]
            # No client certificates, tokens or usage plans: plain HTTP or server-side TLS only.
            self.assertIn(s.listener, ("plain", "tls"), name)
            self.assertEqual((s.bearer, s.refused, s.peers), (False, False, None), name)
        self.assertIn("cache_hit", ran)
        self.assertNotIn("mtls_small", ran)
        self.assertFalse(harness.runs_scenario("nginx", by_name["genesys_route"]))
        self.assertTrue(harness.runs_scenario("seawall", by_name["genesys_route"]))

    def test_bare_pingora_gets_its_tls_listener_and_cached_answer(self):
        with tempfile.TemporaryDirectory() as d:
            (peer,) = harness.make_peers(["pingora"], "/bin/seawall", 9000, d, False, pingora_bin="/bin/bare")
            argv = peer.argv
            self.assertEqual(argv[0], "/bin/bare")
            tls = argv.index("--tls")
            self.assertEqual(argv[tls + 1], f"127.0.0.1:{peer.ports['tls']}")
            self.assertEqual(argv[tls + 2:tls + 4], [f"{d}/server.pem", f"{d}/server.key"])
            with open(argv[argv.index("--answer") + 1]) as f:
                self.assertEqual(f.read(), harness.SMALL_JSON)

    def test_table_gives_ratios_to_each_peer_present(self):
        one = {"rps": {"median": 1000}, "cpu_us_per_request": {"median": 0, "min": 0, "max": 0},
               "peak_rss_kb": 1024, "errors": 0}
        def peer(cpu):
            return dict(one, cpu_us_per_request={"median": cpu, "min": cpu, "max": cpu})
        small = [s for s in harness.SCENARIOS if s.name == "small"]
        text = harness.table({"small": {"seawall": peer(30), "nginx": peer(15), "pingora": peer(20)}},
                             small, ["seawall", "nginx", "pingora"], "t")
        row = [line for line in text.splitlines() if line.startswith("| small | seawall")][0]
        self.assertTrue(row.endswith("| 2.00× | – | 1.50× |"), row)

    def test_tls_listeners_match_each_other(self):
        with tempfile.TemporaryDirectory() as d:
            ports = (1100, 1101)
            n = harness.nginx_conf(1000, 2000, d, access_log=False, tls_ports=ports)
            h = harness.haproxy_conf(1001, 2000, d, access_log=False, tls_ports=ports)
            s = harness.seawall_conf(1002, 1003, 2000, access_log=False, workdir=d, tls_ports=ports)
        for text in (n, h, s):
            self.assertIn("127.0.0.1:1100", text)
            self.assertIn("127.0.0.1:1101", text)
            self.assertIn(f"{d}/ca.pem", text)
        self.assertIn("ssl_verify_client on", n)
        self.assertIn("ssl_session_tickets off", n)
        self.assertIn("verify required no-tls-tickets", h)
        self.assertIn("mode: required", s)
        self.assertNotIn("1100", harness.seawall_conf(1002, 1003, 2000, access_log=False, workdir=d))

    def test_tls_material_has_a_server_and_a_client_of_one_ca(self):
        with tempfile.TemporaryDirectory() as d:
            harness.make_tls_material(d)
            for name in ("server", "client"):
                out = subprocess.run(["openssl", "verify", "-CAfile", "ca.pem", f"{name}.pem"], cwd=d,
                                     capture_output=True, text=True)
                self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            with open(os.path.join(d, "server-combined.pem")) as f:
                combined = f.read()
        self.assertIn("BEGIN CERTIFICATE", combined)
        self.assertIn("PRIVATE KEY", combined)

    def test_new_connection_scenarios_close_each_connection(self):
        calls = []
        real_run = harness.subprocess.run
        harness.subprocess.run = lambda argv, **kw: calls.append(argv) or type("R", (), {"stdout": "", "returncode": 0})()
        try:
            scenario = next(s for s in harness.SCENARIOS if s.name == "tls_handshake")
            with self.assertRaises(ValueError):
                harness.run_wrk(1, scenario, 1, "/tmp")
            scenario = next(s for s in harness.SCENARIOS if s.name == "mtls_handshake")
            with self.assertRaises(Exception):
                harness.run_oha_closed(1, scenario, 1, "/tmp")
        finally:
            harness.subprocess.run = real_run
        self.assertIn("Connection: close", calls[0])
        self.assertEqual(calls[0][-1], "https://127.0.0.1:1/small")
        self.assertIn("--disable-keepalive", calls[1])
        self.assertIn("--cert", calls[1])

    def test_herd_routes_go_to_the_slow_backend_through_each_cache(self):
        with tempfile.TemporaryDirectory() as d:
            n = harness.nginx_conf(1000, 2000, d, access_log=False, slow_port=3000)
            h = harness.haproxy_conf(1001, 2000, d, access_log=False, slow_port=3000)
            s = harness.seawall_conf(1002, 1003, 2000, access_log=False, workdir=d, slow_port=3000)
        for text in (n, h, s):
            self.assertIn("127.0.0.1:3000", text)
        self.assertIn(f"location {harness.HERD_PREFIX} ", n)
        self.assertIn("proxy_cache_lock on", n)
        self.assertIn("use_backend be_herd", h)
        self.assertIn("cache-use hot", h)
        self.assertIn('path: "/herd/{key}"', s)
        self.assertIn("vary: [path.key]", s)

    def test_herd_counts_what_reaches_the_backend_and_every_answer(self):
        slow = harness.SlowBackend()
        slow.start()
        try:
            # Straight at the backend: nothing coalesces, so every request is a query.
            peer = harness.Peer("direct", slow.port, [], "/tmp", "/dev/null")
            result = harness.thundering_herd(peer, slow, "k", size=20)
        finally:
            slow.stop()
        self.assertEqual(result["backend_queries"], 20)
        self.assertEqual(result["codes"], {"200": 20})
        self.assertEqual(result["errors"], 0)
        self.assertGreaterEqual(result["seconds"], harness.HERD_DELAY_SECS)
        table = harness.herd_table({"direct": [result]})
        self.assertIn("| direct | 20 | 20 | 20× 200 |", table)

    def test_status_line(self):
        self.assertEqual(harness.parse_status_line(b"HTTP/1.1 504 Gateway Timeout\r\n"), 504)
        with self.assertRaises(ValueError):
            harness.parse_status_line(b"garbage")

    def test_seawall_config_validates(self):
        binary = os.environ.get("SEAWALL_BIN")
        if not binary:
            self.skipTest("SEAWALL_BIN not set")
        with tempfile.TemporaryDirectory() as d:
            harness.make_jwt(d)
            harness.make_tls_material(d)
            harness.make_mediations(d)
            path = os.path.join(d, "seawall.yaml")
            with open(path, "w") as f:
                f.write(harness.seawall_conf(18001, 18002, 18003, access_log=True, workdir=d, tls_ports=(18007, 18008),
                                             slow_port=18013))
            out = subprocess.run([binary, "validate", "-c", path], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)

    def test_nginx_configs_parse(self):
        nginx = "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            self.skipTest("nginx not installed")
        with tempfile.TemporaryDirectory() as d:
            harness.make_tls_material(d)
            for name, text in [("b.conf", harness.backend_nginx_conf(18004, d)),
                               ("p.conf", harness.nginx_conf(18005, 18004, d, access_log=True,
                                                             tls_ports=(18009, 18010), slow_port=18013))]:
                path = os.path.join(d, name)
                with open(path, "w") as f:
                    f.write(text)
                out = subprocess.run([nginx, "-t", "-c", path, "-p", d, "-e", os.path.join(d, "e.log")],
                                     capture_output=True, text=True)
                self.assertEqual(out.returncode, 0, out.stderr)

    def test_haproxy_config_parses(self):
        haproxy = "/usr/sbin/haproxy"
        if not os.path.exists(haproxy):
            self.skipTest("haproxy not installed")
        with tempfile.TemporaryDirectory() as d:
            harness.make_jwt(d)
            harness.make_tls_material(d)
            path = os.path.join(d, "h.cfg")
            with open(path, "w") as f:
                f.write(harness.haproxy_conf(18006, 18004, d, access_log=True, tls_ports=(18011, 18012),
                                             slow_port=18013))
            out = subprocess.run([haproxy, "-c", "-f", path], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)


if __name__ == "__main__":
    unittest.main()
