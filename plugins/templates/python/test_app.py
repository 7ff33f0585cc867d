"""Unit tests in plain CPython, no gateway needed: `python3 -m unittest`."""

import unittest

from wicket import testing

import app


class RequireHeaderTest(unittest.TestCase):
    def setUp(self):
        self.host = testing.FakeHost()
        self.policy = testing.load(app.RequireHeader, {"header": "X-Tenant"})

    def test_a_request_with_the_header_passes(self):
        action = self.policy.request(testing.request(headers={"x-tenant": "acme"}))
        self.assertEqual(action.set_headers, [])

    def test_a_request_without_it_is_refused(self):
        action = self.policy.request(testing.request())
        self.assertEqual(action.status, 400)
        self.assertEqual(action.json()["error"], "missing_header")

    def test_the_config_must_name_the_header(self):
        with self.assertRaises(testing.ConfigError) as e:
            testing.load(app.RequireHeader, {})
        self.assertIn("header", str(e.exception))


if __name__ == "__main__":
    unittest.main()
