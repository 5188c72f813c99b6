"""The output's audio: every input audio stream carried over packet-for-packet, or re-encoded when the container
cannot hold its codec, interleaved with the video by time."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import av

from pipeline.video.codecs import OPUS_RATE, audio_action

log = logging.getLogger(__name__)


class AudioRoute:
    """Carries one input audio stream into the output, packet-for-packet."""

    reencoded = False

    def __init__(self, out: av.container.OutputContainer, template) -> None:
        self.out = out
        self.stream = out.add_stream_from_template(template)

    def mux(self, packet: av.Packet) -> None:
        if packet.size == 0 or packet.dts is None or packet.is_corrupt:
            return  # demux flush markers, and damaged packets the muxer would reject
        packet.stream = self.stream
        self.out.mux(packet)

    def flush(self) -> None:
        pass


class AudioTranscodeRoute(AudioRoute):
    """Decodes one input audio stream and re-encodes it for a container that cannot hold its codec."""

    reencoded = True

    def __init__(self, out: av.container.OutputContainer, template, encoder: str) -> None:
        self.out = out
        self.decoder = template
        rate = OPUS_RATE if encoder == "libopus" else template.sample_rate
        self.stream = out.add_stream(encoder, rate=rate, layout=template.layout.name)

    def mux(self, packet: av.Packet) -> None:
        if packet.size == 0 or packet.is_corrupt:
            return  # the demuxer's end marker would flush the decoder early; flush() does that
        # Decoded frames keep their pts and time base: the encoder's resampler carries them to the new rate, so
        # audio that starts late (or early) stays in sync with the video.
        for frame in self.decoder.decode(packet):
            self.out.mux(self.stream.encode(frame))

    def flush(self) -> None:
        for frame in self.decoder.decode(None):
            self.out.mux(self.stream.encode(frame))
        self.out.mux(self.stream.encode(None))


class AudioMuxer:
    """Feeds every audio stream of source into out, interleaved with the video by time (constant memory)."""

    def __init__(self, source: Path, out: av.container.OutputContainer, container: str) -> None:
        self.input = av.open(str(source), "r")
        self.routes: dict[int, AudioRoute] = {}
        try:
            for stream in self.input.streams.audio:
                self.routes[stream.index] = self.add_route(out, container, stream, source)
        except BaseException:
            self.input.close()
            raise
        self.packets = self.input.demux(*self.input.streams.audio) if self.routes else iter(())
        self.pending: av.Packet | None = None

    @staticmethod
    def add_route(out, container: str, stream, source: Path) -> AudioRoute:
        codec = stream.codec_context.name
        action = audio_action(container, codec)
        if action == "copy":
            return AudioRoute(out, stream)
        log.warning("%s: %s cannot hold %s audio (stream %d); re-encoding it with %s",
                    source, container, codec, stream.index, action)
        return AudioTranscodeRoute(out, stream, action)

    def mux_until(self, seconds: float) -> None:
        """Mux audio packets that start at or before `seconds`."""
        while True:
            packet = self.pending if self.pending is not None else next(self.packets, None)
            if packet is None:
                return
            start = packet.pts if packet.pts is not None else packet.dts
            if start is not None and packet.time_base and float(start * packet.time_base) > seconds:
                self.pending = packet
                return
            self.pending = None
            self.routes[packet.stream.index].mux(packet)

    def finish(self) -> None:
        self.mux_until(math.inf)
        for route in self.routes.values():
            route.flush()

    def close(self) -> None:
        self.input.close()
