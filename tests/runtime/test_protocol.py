from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import protocol
from runtime.errors import ProtocolError
from runtime.protocol import HEADER, Frame, FrameDecoder, FrameReader, Kind, encode

frame_parts = st.tuples(
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),
    st.lists(st.binary(max_size=64), max_size=8),
)


def decode_all(data: bytes) -> list[Frame]:
    decoder = FrameDecoder()
    frames = decoder.feed(data)
    assert decoder.pending_bytes == 0
    return frames


def test_encode_layout_is_header_lengths_then_fields() -> None:
    data = encode(Kind.RESULT, 7, [b"200", b"", b"body"])

    assert data == struct.pack("<IBIH3I", 19, 2, 7, 3, 3, 0, 4) + b"200body"
    assert HEADER.size == 11


def test_frame_without_fields_round_trips() -> None:
    assert decode_all(encode(Kind.READY, 0, [])) == [Frame(Kind.READY, 0, [])]


@given(parts=st.lists(frame_parts, max_size=6), data=st.data())
def test_frames_round_trip_whatever_the_chunking(
    parts: list[tuple[int, int, list[bytes]]], data: st.DataObject
) -> None:
    stream = b"".join(encode(kind, seq, fields) for kind, seq, fields in parts)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=20), label="cuts"))
    decoder = FrameDecoder()
    decoded: list[Frame] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoded.extend(decoder.feed(stream[start:end]))

    assert decoded == [Frame(kind, seq, fields) for kind, seq, fields in parts]
    assert all(type(field) is bytes for frame in decoded for field in frame.fields)
    assert decoder.pending_bytes == 0


def test_several_frames_in_one_feed_keep_their_order_and_the_tail_waits() -> None:
    first = encode(Kind.CALL, 1, [b"POST", b"/a"])
    second = encode(Kind.CALL, 2, [b"GET", b"/b"])
    third = encode(Kind.CALL, 3, [b"PUT", b"/c"])
    decoder = FrameDecoder()

    frames = decoder.feed(first + second + third[:5])

    assert frames == [Frame(Kind.CALL, 1, [b"POST", b"/a"]), Frame(Kind.CALL, 2, [b"GET", b"/b"])]
    assert decoder.pending_bytes == 5
    assert decoder.feed(third[5:]) == [Frame(Kind.CALL, 3, [b"PUT", b"/c"])]
    assert decoder.pending_bytes == 0


def test_partial_header_is_kept_until_the_rest_arrives() -> None:
    data = encode(Kind.RESULT, 9, [b"ok"])
    decoder = FrameDecoder()

    assert decoder.feed(data[:4]) == []
    assert decoder.pending_bytes == 4
    assert decoder.feed(data[4 : HEADER.size + 2]) == []
    assert decoder.pending_bytes == HEADER.size + 2
    assert decoder.feed(data[HEADER.size + 2 :]) == [Frame(Kind.RESULT, 9, [b"ok"])]


def test_byte_by_byte_feed_yields_the_frame_on_the_last_byte() -> None:
    data = encode(Kind.INIT_FAILED, 0, [b"boom"])
    decoder = FrameDecoder()

    early = [decoder.feed(data[i : i + 1]) for i in range(len(data) - 1)]

    assert early == [[]] * (len(data) - 1)
    assert decoder.feed(data[-1:]) == [Frame(Kind.INIT_FAILED, 0, [b"boom"])]


def test_encode_refuses_a_frame_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_FRAME_BYTES", 16)

    assert len(encode(Kind.CALL, 1, [b"x" * 12])) == HEADER.size + 16
    with pytest.raises(ProtocolError, match="frame of 17 bytes exceeds the 16-byte limit"):
        encode(Kind.CALL, 1, [b"x" * 13])


def test_decoder_refuses_an_oversized_header_before_the_payload_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(protocol, "MAX_FRAME_BYTES", 16)
    header_only = HEADER.pack(17, Kind.CALL, 1, 1)

    with pytest.raises(ProtocolError, match=r"peer announced a 17-byte frame \(limit 16\)"):
        FrameDecoder().feed(header_only)


def test_field_lengths_shorter_than_the_payload_are_refused() -> None:
    # Payload 10 bytes: a 4-byte length table saying 3, then 6 bytes of field data.
    data = HEADER.pack(10, Kind.CALL, 1, 1) + struct.pack("<I", 3) + b"abcdef"

    with pytest.raises(ProtocolError, match="frame fields add up to 18 bytes, header says 21"):
        FrameDecoder().feed(data)


def test_field_lengths_longer_than_the_payload_are_refused() -> None:
    data = HEADER.pack(8, Kind.CALL, 1, 1) + struct.pack("<I", 10) + b"abcd"

    with pytest.raises(ProtocolError, match="frame fields add up to 25 bytes, header says 19"):
        FrameDecoder().feed(data + encode(Kind.CALL, 2, [b"next"]))


def test_length_table_running_into_the_next_frame_is_refused() -> None:
    # Two fields announced, but the payload only has room for one length.
    data = HEADER.pack(4, Kind.CALL, 1, 2) + struct.pack("<I", 0)

    with pytest.raises(ProtocolError):
        FrameDecoder().feed(data + encode(Kind.CALL, 2, [b"next"]))


def test_length_table_longer_than_the_payload_is_a_protocol_error() -> None:
    data = HEADER.pack(0, Kind.CALL, 1, 1)

    with pytest.raises(ProtocolError):
        FrameDecoder().feed(data)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    reader_sock, writer_sock = socket.socketpair()
    with reader_sock, writer_sock:
        yield reader_sock, writer_sock


def test_reader_reads_frames_then_none_when_the_peer_closes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    reader_sock, writer_sock = pair
    reader = FrameReader(reader_sock)
    writer_sock.sendall(encode(Kind.CALL, 1, [b"GET", b"/x"]) + encode(Kind.CALL, 2, [b""]))

    assert reader.read() == Frame(Kind.CALL, 1, [b"GET", b"/x"])
    assert reader.read() == Frame(Kind.CALL, 2, [b""])
    writer_sock.close()
    assert reader.read() is None


def test_reader_raises_when_the_peer_closes_mid_frame(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    reader_sock, writer_sock = pair
    reader = FrameReader(reader_sock)
    writer_sock.sendall(encode(Kind.CALL, 1, [b"complete"]))
    writer_sock.sendall(encode(Kind.CALL, 2, [b"cut short"])[:15])
    writer_sock.close()

    assert reader.read() == Frame(Kind.CALL, 1, [b"complete"])
    with pytest.raises(ProtocolError, match="connection closed in the middle of a frame"):
        reader.read()


def test_reader_assembles_a_frame_larger_than_one_recv(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    reader_sock, writer_sock = pair
    big = bytes(range(256)) * 4096  # 1 MiB, four times the reader's recv size
    data = encode(Kind.RESULT, 5, [b"200", big])
    writer = threading.Thread(target=writer_sock.sendall, args=(data,))
    writer.start()
    try:
        frame = FrameReader(reader_sock).read()
    finally:
        writer.join(timeout=10)

    assert frame == Frame(Kind.RESULT, 5, [b"200", big])
