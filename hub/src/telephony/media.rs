//! The media task of one call, spawned by the core when it answers: sends a 20 ms G.711 frame on every
//! tick (the prompt being played, else silence) to the caller's RTP address, and turns the RTP it
//! receives into DTMF digits (RFC 4733) reported to the core with "prompt finished" events.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::core::{CallKey, CoreMsg, MediaEvent};
use super::g711::{FRAME_SAMPLES, Law};
use super::prompts::{Audio, PromptSource, Prompts};
use super::recording::CallRecording;
use super::rtp::{self, DtmfDetector, Packetizer};

/// Commands to a media task; its channel holds this many.
pub const MEDIA_CHANNEL: usize = 16;

/// 20 ms: one frame.
pub const PTIME: Duration = Duration::from_millis(20);

#[derive(Debug)]
pub enum MediaCmd {
    /// Play prompts in order as playback `id`, replacing anything playing; `PlayDone(id)` follows.
    Play { id: u64, prompts: Vec<PromptSource> },
    /// Stop playing (silence follows); no `PlayDone`.
    Stop,
    /// Connect this call's audio with another call's (the B2BUA of a caller and an operator): what
    /// this side hears goes to the other, what the other hears is sent here instead of prompts.
    Bridge(BridgeEnd),
    /// Back to prompts and silence.
    Unbridge,
}

/// Frames of 20 ms of linear audio, from one leg's media task to the other's.
pub type Frame = [i16; FRAME_SAMPLES];

/// Frames one leg may hold for the other before the oldest are dropped: 100 ms of jitter.
pub const BRIDGE_BUFFER: usize = 5;

/// One side of a bridge: where this leg's received audio goes, and where the other leg's comes from.
#[derive(Debug)]
pub struct BridgeEnd {
    pub to_peer: mpsc::Sender<Frame>,
    pub from_peer: mpsc::Receiver<Frame>,
}

/// The two ends of a bridge between legs A and B (decoded audio, so PCMU and PCMA legs mix freely).
pub fn bridge() -> (BridgeEnd, BridgeEnd) {
    let (a_tx, a_rx) = mpsc::channel(BRIDGE_BUFFER);
    let (b_tx, b_rx) = mpsc::channel(BRIDGE_BUFFER);
    (
        BridgeEnd {
            to_peer: a_tx,
            from_peer: b_rx,
        },
        BridgeEnd {
            to_peer: b_tx,
            from_peer: a_rx,
        },
    )
}

/// Everything a media task needs.
pub struct MediaSetup {
    pub key: CallKey,
    pub socket: UdpSocket,
    pub remote: SocketAddr,
    pub law: Law,
    pub dtmf_pt: Option<u8>,
    /// Follow the caller's RTP source address when it differs from the SDP (symmetric RTP).
    pub latch: bool,
    pub prompts: Arc<Prompts>,
    pub core: mpsc::Sender<CoreMsg>,
    /// Listen for an answering machine (outbound calls): one `MediaEvent::Voice` verdict follows.
    pub amd: bool,
    /// The media timeout, the recording and the counters.
    pub watch: MediaWatch,
}

/// What a media task watches and keeps besides prompts and digits.
#[derive(Default)]
pub struct MediaWatch {
    /// After this long without RTP from the caller, `MediaEvent::Timeout` (once).
    pub rtp_timeout: Option<Duration>,
    /// Both directions recorded.
    pub recording: Option<CallRecording>,
    /// Where RTP from a wrong address is counted (`hub_rtp_foreign_total`).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

struct Playing {
    id: u64,
    audio: Vec<Audio>,
    part: usize,
    pos: usize,
}

pub async fn run(setup: MediaSetup, mut cmds: mpsc::Receiver<MediaCmd>, stop: CancellationToken) {
    let MediaSetup {
        key,
        socket,
        mut remote,
        law,
        dtmf_pt,
        latch,
        prompts,
        core,
        amd,
        watch,
    } = setup;
    let MediaWatch {
        rtp_timeout,
        mut recording,
        metrics,
    } = watch;
    let mut last_rtp = tokio::time::Instant::now();
    let mut timed_out = false;
    let mut foreign: u64 = 0;
    let mut amd = amd.then(super::amd::Detector::default);
    let seed = rand_u64();
    let mut out = Packetizer::new(
        law.payload_type(),
        seed as u32,
        (seed >> 32) as u16,
        (seed >> 48) as u32,
    );
    let mut tick = tokio::time::interval(PTIME);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut playing: Option<Playing> = None;
    let mut loading: Option<(u64, oneshot::Receiver<Vec<Audio>>)> = None;
    let mut dtmf = DtmfDetector::default();
    let mut latched = false;
    let mut buf = vec![0u8; 2048];
    let mut frame = [0u8; FRAME_SAMPLES];
    let mut bridged: Option<BridgeEnd> = None;
    // A received packet's samples waiting to fill a whole frame for the other leg.
    let mut heard: Vec<i16> = Vec::with_capacity(FRAME_SAMPLES * 2);
    let report = |event: MediaEvent| {
        let core = core.clone();
        async move {
            // The core outlives its media tasks; a closed channel means the hub is stopping.
            if core.send(CoreMsg::Media { key, event }).await.is_err() {
                tracing::debug!(call = key.0, "media: core gone");
            }
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let mut finished = None;
                if let Some(end) = bridged.as_mut() {
                    // The other leg's audio, else silence (it paused, or its packets were late).
                    match end.from_peer.try_recv() {
                        Ok(pcm) => {
                            for (slot, s) in frame.iter_mut().zip(pcm.iter()) {
                                *slot = law.encode(*s);
                            }
                        }
                        Err(_) => frame.fill(law.silence()),
                    }
                } else {
                for slot in frame.iter_mut() {
                    *slot = match playing.as_mut() {
                        Some(p) => match next_sample(p) {
                            Some(s) => law.encode(s),
                            None => {
                                finished = Some(p.id);
                                playing = None;
                                law.silence()
                            }
                        },
                        None => law.silence(),
                    };
                }
                }
                let packet = out.packet(&frame, FRAME_SAMPLES as u32);
                if let Err(e) = socket.send_to(&packet, remote).await {
                    tracing::debug!(call = key.0, error = %e, "rtp send failed");
                }
                if let Some(rec) = recording.as_mut() {
                    rec.sent(frame.iter().map(|b| law.decode(*b)));
                }
                if let Some(id) = finished {
                    report(MediaEvent::PlayDone(id)).await;
                }
                if let Some(limit) = rtp_timeout
                    && !timed_out
                    && last_rtp.elapsed() >= limit
                {
                    timed_out = true;
                    tracing::info!(call = key.0, silent_s = limit.as_secs(), "rtp: nothing from the caller");
                    report(MediaEvent::Timeout).await;
                }
            }
            cmd = cmds.recv() => match cmd {
                None => return,
                Some(MediaCmd::Stop) => {
                    playing = None;
                    loading = None;
                }
                Some(MediaCmd::Bridge(end)) => {
                    playing = None;
                    loading = None;
                    heard.clear();
                    bridged = Some(end);
                }
                Some(MediaCmd::Unbridge) => bridged = None,
                Some(MediaCmd::Play { id, prompts: sources }) => {
                    playing = None;
                    // Rendering may take a moment (speech synthesis): done aside so frames keep flowing.
                    let (tx, rx) = oneshot::channel();
                    let cache = prompts.clone();
                    tokio::spawn(async move {
                        let mut audio = Vec::with_capacity(sources.len());
                        for s in &sources {
                            audio.push(cache.get(s).await);
                        }
                        let _ = tx.send(audio);
                    });
                    loading = Some((id, rx));
                }
            },
            audio = async {
                match loading.as_mut() {
                    Some((_, rx)) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            } => {
                if let (Some((id, _)), Some(audio)) = (loading.take(), audio) {
                    playing = Some(Playing { id, audio, part: 0, pos: 0 });
                }
            }
            got = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = got else { continue };
                let Ok(packet) = rtp::parse(&buf[..n]) else { continue };
                if latch && !latched && from != remote {
                    tracing::info!(call = key.0, sdp = %remote, actual = %from, "rtp: latching on the caller's source address");
                    remote = from;
                    latched = true;
                }
                if !latch && from != remote {
                    // Not the caller's SDP address: someone else's stream (or an attack), ignored.
                    foreign += 1;
                    if let Some(m) = &metrics {
                        m.inc("hub_rtp_foreign_total", &[]);
                    }
                    if foreign == 1 {
                        tracing::warn!(call = key.0, sdp = %remote, from = %from, "rtp from a wrong address ignored");
                    }
                    continue;
                }
                last_rtp = tokio::time::Instant::now();
                if packet.payload_type == law.payload_type()
                    && let Some(rec) = recording.as_mut()
                {
                    rec.heard(packet.payload.iter().map(|b| law.decode(*b)));
                }
                if packet.payload_type == law.payload_type()
                    && let Some(end) = bridged.as_ref()
                {
                    heard.extend(packet.payload.iter().map(|b| law.decode(*b)));
                    while heard.len() >= FRAME_SAMPLES {
                        let mut pcm: Frame = [0; FRAME_SAMPLES];
                        pcm.copy_from_slice(&heard[..FRAME_SAMPLES]);
                        heard.drain(..FRAME_SAMPLES);
                        // A full buffer means the other leg is not taking frames as fast as they
                        // come (clock drift, a stall): this frame is dropped, the stream goes on.
                        if end.to_peer.try_send(pcm).is_err()
                            && let Some(m) = &metrics
                        {
                            m.inc("hub_bridge_dropped_frames_total", &[]);
                        }
                    }
                }
                if Some(packet.payload_type) == dtmf_pt {
                    for digit in dtmf.push(packet.timestamp, packet.payload) {
                        report(MediaEvent::Dtmf(digit)).await;
                    }
                } else if packet.payload_type == law.payload_type()
                    && let Some(detector) = amd.as_mut()
                {
                    let samples: Vec<i16> = packet.payload.iter().map(|b| law.decode(*b)).collect();
                    if let Some(verdict) = detector.push(&samples) {
                        amd = None;
                        report(MediaEvent::Voice(verdict)).await;
                    }
                }
            }
        }
    }
}

fn next_sample(p: &mut Playing) -> Option<i16> {
    loop {
        let part = p.audio.get(p.part)?;
        if let Some(s) = part.get(p.pos) {
            p.pos += 1;
            return Some(*s);
        }
        p.part += 1;
        p.pos = 0;
    }
}

/// Random bits for SSRC, sequence and timestamp starts, from the OS.
pub fn rand_u64() -> u64 {
    use rand_core::RngCore;
    rand_core::OsRng.next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telephony::rtp::parse;

    #[tokio::test(start_paused = true)]
    async fn frames_are_paced_20ms_apart_and_the_prompt_then_silence_is_sent() {
        let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ours = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ours_addr = ours.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("beep.wav");
        // 100 ms of tone at 8 kHz: five frames.
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&wav, spec).unwrap();
        for s in crate::telephony::prompts::tone(100, 440.0).iter() {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
        let (core_tx, mut core_rx) = mpsc::channel(8);
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            MediaSetup {
                key: CallKey(1),
                socket: ours,
                remote: caller.local_addr().unwrap(),
                law: Law::Pcmu,
                dtmf_pt: Some(101),
                latch: false,
                prompts: Arc::new(Prompts::new(dir.path().into(), "false".into())),
                core: core_tx,
                amd: false,
                watch: MediaWatch::default(),
            },
            cmd_rx,
            stop.clone(),
        ));
        cmd_tx
            .send(MediaCmd::Play {
                id: 7,
                prompts: vec![PromptSource::File(wav)],
            })
            .await
            .unwrap();
        let mut buf = [0u8; 2048];
        let mut seen = Vec::new();
        let start = tokio::time::Instant::now();
        for _ in 0..20 {
            let n = caller.recv(&mut buf).await.unwrap();
            let p = parse(&buf[..n]).unwrap();
            seen.push((
                (tokio::time::Instant::now() - start).as_millis(),
                p.sequence,
                p.timestamp,
                p.marker,
                p.payload.iter().any(|b| *b != 0xff),
            ));
        }
        for pair in seen.windows(2) {
            assert_eq!(pair[1].0 - pair[0].0, 20, "20 ms apart: {seen:?}");
            assert_eq!(pair[1].1, pair[0].1.wrapping_add(1));
            assert_eq!(pair[1].2, pair[0].2.wrapping_add(160));
        }
        assert!(
            seen[0].3 && seen[1..].iter().all(|s| !s.3),
            "marker on the first only"
        );
        let audible = seen.iter().filter(|s| s.4).count();
        assert_eq!(audible, 5, "five frames of tone, then silence: {seen:?}");
        let done = core_rx.recv().await.unwrap();
        assert!(matches!(
            done,
            CoreMsg::Media {
                event: MediaEvent::PlayDone(7),
                ..
            }
        ));

        // RFC 4733 digit 5 (three end packets): one digit.
        for end in [false, true, true, true] {
            let ev = [5u8, if end { 0x80 } else { 0 }, 0, 160];
            let mut pk = Packetizer::new(101, 1, 1, 4000);
            caller.send_to(&pk.packet(&ev, 0), ours_addr).await.unwrap();
        }
        let digit = core_rx.recv().await.unwrap();
        assert!(matches!(
            digit,
            CoreMsg::Media {
                event: MediaEvent::Dtmf('5'),
                ..
            }
        ));
        stop.cancel();
        task.await.unwrap();
        assert!(core_rx.try_recv().is_err(), "one digit only");
    }

    #[tokio::test]
    async fn bridged_legs_hear_each_other_across_codecs() {
        let dir = tempfile::tempdir().unwrap();
        let prompts = Arc::new(Prompts::new(dir.path().into(), "false".into()));
        let (core_tx, _core_rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        // Leg A: a caller on PCMU; leg B: an operator on PCMA.
        let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let operator = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut legs = Vec::new();
        for (key, remote, law) in [
            (1, caller.local_addr().unwrap(), Law::Pcmu),
            (2, operator.local_addr().unwrap(), Law::Pcma),
        ] {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let (tx, rx) = mpsc::channel(8);
            tokio::spawn(run(
                MediaSetup {
                    key: CallKey(key),
                    socket,
                    remote,
                    law,
                    dtmf_pt: Some(101),
                    latch: false,
                    prompts: prompts.clone(),
                    core: core_tx.clone(),
                    amd: false,
                    watch: MediaWatch::default(),
                },
                rx,
                stop.clone(),
            ));
            legs.push((addr, tx));
        }
        let (a, b) = bridge();
        legs[0].1.send(MediaCmd::Bridge(a)).await.unwrap();
        legs[1].1.send(MediaCmd::Bridge(b)).await.unwrap();

        // The caller speaks (a tone) for 400 ms; the operator must get it as PCMA, and vice versa.
        let tone = crate::telephony::prompts::tone(400, 440.0);
        let mut pk_a = Packetizer::new(Law::Pcmu.payload_type(), 7, 1, 0);
        let mut pk_b = Packetizer::new(Law::Pcma.payload_type(), 8, 1, 0);
        for chunk in tone.chunks(FRAME_SAMPLES) {
            let mu: Vec<u8> = chunk.iter().map(|s| Law::Pcmu.encode(*s)).collect();
            let a: Vec<u8> = chunk.iter().map(|s| Law::Pcma.encode(*s)).collect();
            caller
                .send_to(&pk_a.packet(&mu, FRAME_SAMPLES as u32), legs[0].0)
                .await
                .unwrap();
            operator
                .send_to(&pk_b.packet(&a, FRAME_SAMPLES as u32), legs[1].0)
                .await
                .unwrap();
            tokio::time::sleep(PTIME).await;
        }
        let audible = |socket: &UdpSocket, law: Law| {
            let mut buf = [0u8; 2048];
            let mut loud = 0;
            let mut packets = 0;
            while let Ok(n) = socket.try_recv(&mut buf) {
                let p = parse(&buf[..n]).unwrap();
                assert_eq!(p.payload_type, law.payload_type());
                packets += 1;
                if p.payload
                    .iter()
                    .any(|b| law.decode(*b).unsigned_abs() > 1000)
                {
                    loud += 1;
                }
            }
            (packets, loud)
        };
        let (sent_to_operator, loud_at_operator) = audible(&operator, Law::Pcma);
        let (sent_to_caller, loud_at_caller) = audible(&caller, Law::Pcmu);
        assert!(sent_to_operator >= 15 && sent_to_caller >= 15);
        assert!(
            loud_at_operator >= 10,
            "{loud_at_operator} of {sent_to_operator}"
        );
        assert!(loud_at_caller >= 10, "{loud_at_caller} of {sent_to_caller}");
        stop.cancel();
    }
}
