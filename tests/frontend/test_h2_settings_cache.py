"""The vendored H2Connection keeps the settings it reads per new stream (both
initial windows, each side's MAX_CONCURRENT_STREAMS) as plain attributes,
refreshed when a Settings is acknowledged or assigned; and its closed streams
in an OrderedDict it bounds itself. The same exchange through the installed h2
release (what the patches started from) and the vendored copy must see the
same windows, limits and frame sizes at every step."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from pyproxyd._vendor import h2 as vendored_h2
from pyproxyd._vendor.h2 import config as v_config
from pyproxyd._vendor.h2 import connection as v_connection
from pyproxyd._vendor.h2 import events as v_events
from pyproxyd._vendor.h2 import exceptions as v_exceptions
from pyproxyd._vendor.h2 import settings as v_settings
from pyproxyd.frontend.http2.connection import _Settings

INSTALLED = (h2.config, h2.connection, h2.events, h2.exceptions, h2.settings)
VENDORED = (v_config, v_connection, v_events, v_exceptions, v_settings)
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
ANSWER = [(b":status", b"200")]


def _pair(mods: tuple[ModuleType, ...]) -> tuple[Any, Any]:
    config, connection = mods[0], mods[1]
    client = connection.H2Connection(config.H2Configuration(client_side=True))
    server = connection.H2Connection(config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def _refused(call: Any, exceptions: ModuleType) -> bool:
    try:
        call()
    except exceptions.TooManyStreamsError:
        return True
    return False


def _exchange(mods: tuple[ModuleType, ...]) -> list[Any]:
    """What a client and a server see as the server's SETTINGS change windows,
    the stream limit and the frame size mid-connection."""
    _, _, events, exceptions, settings = mods
    codes = settings.SettingCodes
    client, server = _pair(mods)
    seen: list[Any] = []
    client.send_headers(1, REQUEST)
    server.receive_data(client.data_to_send())
    seen.append(
        ("before", client.local_flow_control_window(1), server.remote_flow_control_window(1))
    )

    server.update_settings(
        {
            codes.INITIAL_WINDOW_SIZE: 1000,
            codes.MAX_CONCURRENT_STREAMS: 2,
            codes.MAX_FRAME_SIZE: 32768,
        }
    )
    client.send_headers(3, REQUEST)  # the SETTINGS not received yet: old values
    seen.append(("pending", client.local_flow_control_window(3)))
    got = client.receive_data(server.data_to_send())
    seen.append(("changed", sorted(type(e).__name__ for e in got)))
    # Open streams follow the delta; a third stream is over the new limit.
    seen.append(
        ("applied", client.local_flow_control_window(1), client.local_flow_control_window(3))
    )
    seen.append(("limit", _refused(lambda: client.send_headers(5, REQUEST), exceptions)))
    client.end_stream(1)
    server.receive_data(client.data_to_send())  # the client's ACK, then its streams
    server.send_headers(1, ANSWER, end_stream=True)
    client.receive_data(server.data_to_send())
    client.send_headers(5, REQUEST)  # stream 1 closed: room again, with the new window
    seen.append(("new stream", client.local_flow_control_window(5), client.max_outbound_frame_size))
    got = server.receive_data(client.data_to_send())
    seen.append(("server side", server.remote_flow_control_window(5)))

    # The next DATA may be as large as the new SETTINGS_MAX_FRAME_SIZE: one frame.
    server.increment_flow_control_window(40000, stream_id=5)
    server.increment_flow_control_window(40000)
    client.receive_data(server.data_to_send())
    client.send_data(5, b"x" * 30000)
    got = server.receive_data(client.data_to_send())
    seen.append(("data", [len(e.data) for e in got if isinstance(e, events.DataReceived)]))

    # The server's own limit (2, acknowledged): a client that forgets the
    # server's SETTINGS (a new Settings assigned) goes over it.
    client.remote_settings = settings.Settings(client=False)
    seen.append(("forgot", client.local_flow_control_window(5)))
    client.send_headers(7, REQUEST)
    try:
        got = server.receive_data(client.data_to_send())
        seen.append(("server limit", sorted(type(e).__name__ for e in got)))
    except exceptions.TooManyStreamsError:
        seen.append(("server limit", "TooManyStreamsError"))
    seen.append(("frames", client.data_to_send() == b"", server.data_to_send()[3:4]))
    return seen


def test_settings_changes_take_effect_as_in_h2() -> None:
    assert vendored_h2.__name__ == "pyproxyd._vendor.h2"
    ours, theirs = _exchange(VENDORED), _exchange(INSTALLED)
    assert ours == theirs
    assert ours[0] == ("before", 65535, 65535)
    assert ours[1] == ("pending", 65535)
    assert ours[3] == ("applied", 1000, 1000)
    assert ours[4] == ("limit", True)
    assert ours[5] == ("new stream", 1000, 32768)
    assert ours[6] == ("server side", 1000)
    assert ours[7] == ("data", [30000])
    assert ours[9] == ("server limit", "TooManyStreamsError")  # and a GOAWAY (type 7)
    assert ours[10] == ("frames", True, b"\x07")


def test_an_assigned_settings_is_read_at_once() -> None:
    """pyproxyd's frontend assigns its own Settings (without h2's stream limit)
    before the connection starts: new streams see its values, not the defaults'."""
    codes = v_settings.SettingCodes
    conn = v_connection.H2Connection(v_config.H2Configuration(client_side=False))
    conn.local_settings = _Settings(
        client=False,
        initial_values={codes.MAX_CONCURRENT_STREAMS: 1, codes.INITIAL_WINDOW_SIZE: 30000},
    )
    conn.initiate_connection()
    client = v_connection.H2Connection(v_config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.remote_settings = v_settings.Settings(client=False)  # ignores the server's limit
    conn.receive_data(client.data_to_send())
    client.receive_data(conn.data_to_send())
    client.remote_settings = v_settings.Settings(client=False)
    for sid in (1, 3, 5):
        client.send_headers(sid, REQUEST)
    got = conn.receive_data(client.data_to_send())
    # No TooManyStreamsError: _Settings says no limit; the streams get its window.
    assert [e.stream_id for e in got if isinstance(e, v_events.RequestReceived)] == [1, 3, 5]
    assert conn.remote_flow_control_window(5) == 30000


def test_closed_streams_are_kept_up_to_the_limit_oldest_first() -> None:
    client, server = _pair(VENDORED)
    client.MAX_CLOSED_STREAMS = 3
    for sid in range(1, 11, 2):
        client.send_headers(sid, REQUEST, end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(sid, ANSWER, end_stream=True)
        client.receive_data(server.data_to_send())
    assert client.open_outbound_streams == 0  # moves the closed ones out
    closed = client._closed_streams
    assert list(closed) == [5, 7, 9]
    assert all(closed[sid] is not None for sid in closed)
    # A frame for a stream closed long ago is still a connection error, as in h2.
    assert client._stream_closed_by(1) is None
