"""Test program (raw bindings, no SDK): `init` raises an exception that
componentize-py cannot turn into `err` when the config asks for it
({"raise": "<message>"}); `on-request` raises when the request has
`x-raise: <message>`. The gateway must report the guest's own words."""

import json

import wit_world
from wit_world.imports import types


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> types.Hooks:
        message = json.loads(config).get("raise")
        if message:
            raise RuntimeError(message)
        return types.Hooks.ON_REQUEST

    def on_request(self, request: types.Request) -> types.RequestAction:
        message = request.header("x-raise")
        if message is not None:
            raise ValueError(message.decode())
        return types.RequestAction_Continue(types.RequestPatch([], [], None, None, None, []))

    def on_response(self, request, outcome, response):
        raise NotImplementedError("on-response is not declared")
