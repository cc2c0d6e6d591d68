"""The vendored h2's speed patches (pyproxyd/_vendor/README.md) keep what h2
sends and reports: checked against the installed hpack and h2, the libraries
the patches started from, in the build under test (pure or compiled)."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import hpack

from pyproxyd._vendor.h2.config import H2Configuration, OutputLogger
from pyproxyd._vendor.h2.connection import ConnectionInputs, ConnectionState, H2Connection
from pyproxyd._vendor.h2.events import RequestReceived, ResponseReceived, TrailersReceived
from pyproxyd._vendor.h2.exceptions import ProtocolError
from pyproxyd._vendor.h2.stream import StreamClosedBy, StreamInputs
from pyproxyd._vendor.h2.utilities import utf8_encode_headers
from pyproxyd._vendor.hpack import HeaderTuple, NeverIndexedHeaderTuple
from pyproxyd.frontend.http2.connection import _CONFIG as FRONT_CONFIG
from pyproxyd.hpack_plain import PlainEncoder
from pyproxyd.upstream.h2check import response_malformed
from pyproxyd.upstream.h2conn import client_config

REQUEST: list[Any] = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"127.0.0.1"),
    (b":path", b"/echo.Echo/Unary"),
    (b"content-type", b"application/grpc"),
    NeverIndexedHeaderTuple(b"x-request-id", b"0123456789abcdef"),
    ("user-agent", "text, encoded by h2"),
    NeverIndexedHeaderTuple(b"authorization", b"secret"),
]
# A never-indexed field given as text: rebuilt as bytes, of the same class.
TEXT_SECRET: Any = NeverIndexedHeaderTuple("authorization", "secret")


def upstream_client() -> H2Connection:
    """Configured as upstream/h2conn.py configures its connections."""
    conn = H2Connection(client_config())
    conn.encoder = PlainEncoder()
    conn.initiate_connection()
    return conn


def test_fields_keep_their_hpack_kind_and_text_is_encoded() -> None:
    sent = utf8_encode_headers([*REQUEST, TEXT_SECRET])
    assert sent == [*REQUEST[:6], (b"user-agent", b"text, encoded by h2"), REQUEST[7], REQUEST[7]]
    assert [type(h) for h in sent] == [tuple] * 5 + [NeverIndexedHeaderTuple, tuple] + [
        NeverIndexedHeaderTuple
    ] * 2
    indexable = HeaderTuple(b"a", b"b")
    assert type(utf8_encode_headers([indexable])[0]) is HeaderTuple

    # On the wire, through the pyproxyd-configured client: the never-indexed
    # field is a never-indexed literal to another HPACK decoder.
    client = upstream_client()
    client.send_headers(1, REQUEST, end_stream=True)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    events = server.receive_data(client.data_to_send())
    (request,) = [e for e in events if isinstance(e, h2.events.RequestReceived)]
    fields = {bytes(n): h for n, h in ((h[0], h) for h in request.headers)}
    assert isinstance(fields[b"x-request-id"], hpack.NeverIndexedHeaderTuple)
    assert fields[b"x-request-id"][1] == b"0123456789abcdef"
    assert not isinstance(fields[b"content-type"], hpack.NeverIndexedHeaderTuple)
    assert fields[b"user-agent"][1] == b"text, encoded by h2"
    assert isinstance(fields[b"authorization"], hpack.NeverIndexedHeaderTuple)


def test_a_grpc_call_between_two_vendored_connections() -> None:
    """The events a unary call makes, with the state machines' enum tables
    (hashed by identity) and validation flags built only where a check reads them."""
    client = upstream_client()
    server = H2Connection(FRONT_CONFIG)
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    for call in range(3):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, REQUEST)
        client.send_data(sid, b"\x00\x00\x00\x00\x02hi", end_stream=True)
        events = server.receive_data(client.data_to_send())
        (request,) = [e for e in events if isinstance(e, RequestReceived)]
        assert request.stream_id == sid == 1 + 2 * call
        assert request.headers[5] == (b"x-request-id", b"0123456789abcdef")
        server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        server.send_data(sid, b"\x00\x00\x00\x00\x02hi")
        server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        answer = client.receive_data(server.data_to_send())
        kinds = [type(e).__name__ for e in answer]
        assert kinds == [
            "ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded",
        ]  # fmt: skip
        assert isinstance(answer[0], ResponseReceived) and answer[0].headers[0] == (
            b":status",
            b"200",
        )
        assert isinstance(answer[2], TrailersReceived)
        assert answer[2].headers == [(b"grpc-status", b"0")]
    assert client.open_outbound_streams == 0 and server.open_inbound_streams == 0
    assert client.state_machine.state is ConnectionState.CLIENT_OPEN


def _answer_upper_case(client: H2Connection) -> Any:
    """`client` asks, a server with its outbound checks off answers a head with
    an upper-case field name; what the client's receive_data returns."""
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=False, validate_outbound_headers=False, normalize_outbound_headers=False
        )
    )
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(b":status", b"200"), (b"Content-Type", b"text/plain")])
    return client.receive_data(server.data_to_send())


def test_inbound_checks_still_run_where_configured() -> None:
    """h2's inbound validation still runs where it is on (the lazily built
    flags): an upper-case name in a response is a protocol error."""
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    try:
        _answer_upper_case(client)
    except ProtocolError as exc:
        assert "uppercase" in str(exc)
    else:
        raise AssertionError("an upper-case field name was accepted")


def test_the_upstream_side_leaves_response_checks_to_h2check() -> None:
    """The upstream connection turns h2's check of responses off: h2conn checks
    them (h2check), failing the stream only, not the connection."""
    client = upstream_client()
    (response,) = [e for e in _answer_upper_case(client) if isinstance(e, ResponseReceived)]
    why = response_malformed(response.headers, False)
    assert why is not None and "b'Content-Type'" in why
    assert client.state_machine.state is ConnectionState.CLIENT_OPEN


def test_enum_members_hash_by_identity_and_stay_distinct() -> None:
    for enum in (ConnectionState, ConnectionInputs, StreamInputs, StreamClosedBy):
        members = list(enum)
        assert len({hash(m) for m in members}) == len(members)
        assert {m: m.name for m in members}[members[-1]] == members[-1].name


def test_a_logger_that_logs_is_still_called(tmp_path: Any) -> None:
    with (tmp_path / "h2.log").open("w") as out:
        conn = H2Connection(H2Configuration(client_side=True, logger=OutputLogger(out)))
        conn.initiate_connection()
        conn.send_headers(1, REQUEST, end_stream=True)
    text = (tmp_path / "h2.log").read_text()
    assert "Send headers on stream ID 1" in text
    assert "Stream ID 1 created" in text


def test_the_transition_tables_say_what_h2s_tables_say() -> None:
    """The state machines read _TABLE (by input, then state); it is built from
    h2's own `_transitions`, and must hold the same transition for every pair."""
    from pyproxyd._vendor.h2 import connection as hconn
    from pyproxyd._vendor.h2 import stream as hstream

    for s_input in hstream.StreamInputs:
        for s_state in hstream.StreamState:
            got = hstream._TABLE[s_input][s_state]
            assert got == hstream._transitions.get((s_state, s_input))
    machine = hconn.H2ConnectionStateMachine
    for c_input in ConnectionInputs:
        for c_state in ConnectionState:
            expected = machine._transitions.get((c_state, c_input))
            assert hconn._TABLE[c_input].get(c_state) == expected


def test_an_invalid_transition_closes_and_raises_as_before() -> None:
    from pyproxyd._vendor.h2.connection import H2ConnectionStateMachine
    from pyproxyd._vendor.h2.stream import H2StreamStateMachine, StreamState

    stream = H2StreamStateMachine(1)
    try:
        stream.process_input(StreamInputs.SEND_DATA)  # idle: no DATA yet
    except ProtocolError as exc:
        assert str(exc) == f"Invalid input {StreamInputs.SEND_DATA} in state {StreamState.IDLE}"
    else:
        raise AssertionError("DATA on an idle stream was accepted")
    assert stream.state is StreamState.CLOSED
    conn = H2ConnectionStateMachine()
    try:
        conn.process_input(ConnectionInputs.SEND_DATA)
    except ProtocolError as exc:
        assert "Invalid input ConnectionInputs.SEND_DATA in state ConnectionState.IDLE" in str(exc)
    else:
        raise AssertionError("DATA on an idle connection was accepted")
    assert conn.state is ConnectionState.CLOSED


def test_config_options_are_checked_as_they_are_set() -> None:
    config = H2Configuration(client_side=False, header_encoding="utf-8")
    assert (config.client_side, config.header_encoding) == (False, "utf-8")
    for name, value in (("client_side", 1), ("validate_inbound_headers", None)):
        try:
            setattr(config, name, value)
        except ValueError as exc:
            assert str(exc) == f"{name} must be a bool"
        else:
            raise AssertionError(f"{name} took a non-bool")
    for bad in (True, 1):
        try:
            config.header_encoding = bad  # type: ignore[assignment]
        except ValueError:
            pass
        else:
            raise AssertionError(f"header_encoding took {bad!r}")
    assert config.client_side is False and config.header_encoding == "utf-8"
