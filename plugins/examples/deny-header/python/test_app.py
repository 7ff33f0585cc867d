"""Unit tests in plain CPython: `python3 -m unittest` in this directory."""

import unittest

from wicket import testing

import app


class DenyHeaderTest(unittest.TestCase):
    def setUp(self):
        self.host = testing.FakeHost()
        self.policy = testing.load(app.DenyHeader, {"header": "X-Debug"})

    def test_passes_without_the_header(self):
        action = self.policy.request(testing.request(headers={"x-other": "1"}))
        self.assertEqual(action.set_headers, [])

    def test_refuses_with_the_header(self):
        action = self.policy.request(testing.request(headers={"x-debug": "1"}))
        self.assertEqual(action.status, 403)
        self.assertEqual(action.json()["error"], "denied")
        self.assertEqual(action.header("content-type"), "application/json")

    def test_refuses_bad_configs_naming_the_field(self):
        for config, field in [({}, "header"), ({"header": "x", "status": 200}, "status")]:
            with self.assertRaises(testing.ConfigError) as e:
                testing.load(app.DenyHeader, config)
            self.assertIn(field, str(e.exception))


if __name__ == "__main__":
    unittest.main()
