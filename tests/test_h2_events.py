"""The vendored h2's events, compiled or not, over a client and a server connection
joined in memory: the fields hold what h2 puts in them, header fields keep their
HeaderTuple classes through the stateless encoder and the decoder, an error code
stays an ErrorCodes member."""

from __future__ import annotations

import dataclasses

from pyproxyd._vendor.h2 import events
from pyproxyd._vendor.h2.config import H2Configuration
from pyproxyd._vendor.h2.connection import H2Connection
from pyproxyd._vendor.h2.errors import ErrorCodes
from pyproxyd._vendor.hpack import HeaderTuple, NeverIndexedHeaderTuple
from pyproxyd.hpack_plain import PlainEncoder

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/echo.Echo/Unary"),
    (b":authority", b"example.test"),
    (b"content-type", b"application/grpc"),
    NeverIndexedHeaderTuple(b"authorization", b"Bearer t"),
]


def _pair() -> tuple[H2Connection, H2Connection]:
    client = H2Connection(H2Configuration(client_side=True))
    server = H2Connection(H2Configuration(client_side=False))
    client.encoder = PlainEncoder()
    server.encoder = PlainEncoder()
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def test_a_unary_exchange_gives_its_events_with_their_fields() -> None:
    client, server = _pair()
    client.send_headers(1, REQUEST)
    client.send_data(1, b"hello", end_stream=True)
    got = server.receive_data(client.data_to_send())
    request, data, ended = got[0], got[1], got[2]
    assert isinstance(request, events.RequestReceived) and request.stream_id == 1
    assert request.stream_ended is None and request.priority_updated is None
    assert list(request.headers) == REQUEST
    assert [type(h) for h in request.headers] == [HeaderTuple] * 5 + [NeverIndexedHeaderTuple]
    assert isinstance(data, events.DataReceived)
    assert (data.data, data.flow_controlled_length, data.stream_ended) == (b"hello", 5, ended)
    assert isinstance(ended, events.StreamEnded) and ended.stream_id == 1

    server.send_headers(1, [(b":status", b"200")])
    server.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    got = client.receive_data(server.data_to_send())
    response, trailers = got[0], got[1]
    assert isinstance(response, events.ResponseReceived)
    assert response.headers == [(b":status", b"200")]
    assert isinstance(trailers, events.TrailersReceived)
    assert trailers.headers == [(b"grpc-status", b"0")]
    assert isinstance(trailers.stream_ended, events.StreamEnded)


def test_a_reset_and_a_window_update_keep_their_types() -> None:
    client, server = _pair()
    client.send_headers(1, REQUEST)
    server.receive_data(client.data_to_send())
    server.increment_flow_control_window(1000)
    client.reset_stream(1, ErrorCodes.CANCEL)
    got = server.receive_data(client.data_to_send())
    (reset,) = [e for e in got if isinstance(e, events.StreamReset)]
    assert reset.error_code is ErrorCodes.CANCEL and reset.remote_reset is True
    (window,) = [
        e for e in client.receive_data(server.data_to_send()) if isinstance(e, events.WindowUpdated)
    ]
    assert (window.stream_id, window.delta) == (0, 1000)


def test_events_made_directly_keep_dataclass_behaviour() -> None:
    event = events.DataReceived(stream_id=3)
    event.data = b"x"
    event.flow_controlled_length = 1
    assert event == events.DataReceived(stream_id=3, data=b"x", flow_controlled_length=1)
    assert [f.name for f in dataclasses.fields(events.StreamReset)] == [
        "stream_id",
        "error_code",
        "remote_reset",
    ]
    assert repr(events.WindowUpdated(stream_id=0, delta=5)) == (
        "<WindowUpdated stream_id:0, delta:5>"
    )
