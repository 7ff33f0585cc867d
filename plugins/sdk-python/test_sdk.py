"""The SDK's own tests, in plain CPython with the fake host:
`python3 -m unittest` in this directory (scripts/test runs them)."""

import unittest

from wicket import StateError, state, testing


class TakeTokensTest(unittest.TestCase):
    """`state.take_tokens` through the fake, which follows the host's
    arithmetic (gateway/src/state/bucket.rs)."""

    def setUp(self):
        self.host = testing.FakeHost()

    def test_a_new_bucket_allows_its_burst_then_refuses_with_the_waits(self):
        for left in (2, 1, 0):
            b = state.take_tokens("k", 10, 1000, 3)
            self.assertTrue(b.taken)
            self.assertEqual((b.remaining, b.retry_after_ms), (left, 0))
        b = state.take_tokens("k", 10, 1000, 3)
        self.assertFalse(b.taken)
        self.assertEqual((b.remaining, b.retry_after_ms, b.reset_ms), (0, 100, 300))

    def test_refill_is_exact_and_a_cost_takes_all_or_nothing(self):
        self.assertEqual(state.take_tokens("k", 1, 3000, 4, cost=4).remaining, 0)
        self.host.advance(2999)
        self.assertFalse(state.take_tokens("k", 1, 3000, 4).taken)
        self.host.advance(1)
        b = state.take_tokens("k", 1, 3000, 4, cost=2)
        self.assertFalse(b.taken)
        self.assertEqual((b.remaining, b.retry_after_ms), (1, 3000))
        self.assertTrue(state.take_tokens("k", 1, 3000, 4).taken)

    def test_limits_the_host_refuses_and_an_unavailable_store_raise(self):
        for args in ((0, 1000, 5), (1, 1000, 5, 6), (1, 1 << 40, 1 << 20)):
            with self.assertRaises(StateError) as e:
                state.take_tokens("k", *args)
            self.assertEqual(e.exception.kind, "too-large")
        self.host.unavailable = True
        with self.assertRaises(StateError):
            state.take_tokens("k", 1, 1000, 1)


if __name__ == "__main__":
    unittest.main()
