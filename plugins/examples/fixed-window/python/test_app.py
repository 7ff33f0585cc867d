"""Unit tests in plain CPython: `python3 -m unittest` in this directory."""

import unittest

from wicket import testing

import app


class FixedWindowTest(unittest.TestCase):
    def setUp(self):
        self.host = testing.FakeHost()
        self.policy = testing.load(app.FixedWindow, {"limit": 2, "window_seconds": 60})

    def call(self):
        return self.policy.request(testing.request(client="198.51.100.1:5000"))

    def test_counts_then_refuses_until_the_window_ends(self):
        self.assertEqual(dict(self.call().response_headers)["x-ratelimit-remaining"], b"1")
        self.assertEqual(dict(self.call().response_headers)["x-ratelimit-remaining"], b"0")
        self.host.advance(15_000)
        refused = self.call()
        self.assertEqual(refused.status, 429)
        self.assertEqual(refused.header("retry-after"), "45")
        self.host.advance(45_000)
        self.assertEqual(dict(self.call().response_headers)["x-ratelimit-remaining"], b"1")

    def test_lets_traffic_through_when_the_store_is_down(self):
        self.host.unavailable = True
        self.assertEqual(self.call().response_headers, [])


if __name__ == "__main__":
    unittest.main()
