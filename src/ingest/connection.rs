//! One device connection: welcome, then frames in and acks out (SPEC §3).
//!
//! The loop owns the connection's protocol state: the seq it expects next,
//! the count of consecutive bad frames, and the window of batches waiting
//! for the writer. Acks come from a `FuturesOrdered` of writer replies, so
//! they go out in the order the batches came in; those that complete
//! together (one group commit) leave in one write. While the window is full the
//! loop stops reading: backpressure reaches the device through TCP instead
//! of memory growing here.
//!
//! Every send is raced against shutdown, replacement and a write timeout
//! ([`ws::send`]), so a device that stops reading never holds the loop, its
//! replacement, or the daemon's shutdown. Close codes and the keep-alive are
//! [`crate::ws`]'s.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Ingest;
use crate::protocol::{
    decode_batch_with, encode_frame, AckFrame, Batch, ErrorCode, ErrorFrame, Names, WelcomeFrame,
};
use crate::store::{CommitOutcome, IngestBatch, WriteRequest};
use crate::ws::{self, Due, End, KeepAlive, Message, Outbound, Peer, Socket};

/// Batches with `seq` a connection may have queued and not yet answered.
/// Bounds per-connection memory (at most this many batches of at most
/// `max_frame_bytes` each) while allowing a deep pipeline per device.
const MAX_IN_FLIGHT: usize = 128;

/// A queued batch with `seq`, waiting for its outcome.
type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = (u64, CommitOutcome)> + Send>>;

struct Conn {
    socket: Socket,
    device: Arc<str>,
    ingest: Arc<Ingest>,
    /// Cancelled when a newer connection of the same device registers.
    replaced: CancellationToken,
    /// Set once shutdown began: sends are then bounded by this instead of
    /// being cut short by the shutdown signal (the last acks must go out).
    draining_until: Option<Instant>,
    /// The seq this connection expects next; `None` while the device has no
    /// seq record (then any seq is accepted). Covers batches already queued,
    /// so it runs ahead of what is durable; the writer has the final word.
    expected: Option<u64>,
    consecutive_errors: u32,
    pending: FuturesOrdered<Pending>,
    /// Sensor names and units this device sent: its readings share them.
    names: Names,
}

/// Runs the connection to its end; never returns an error (every ending is a
/// close frame, and a broken socket just ends it).
pub async fn run(socket: Socket, device: Arc<str>, ingest: Arc<Ingest>) {
    let registration = ingest.registry.register(device.clone());
    crate::events::DeviceConnected.emit();
    let mut conn = Conn {
        socket,
        device,
        ingest,
        replaced: registration.replaced.clone(),
        draining_until: None,
        expected: None,
        consecutive_errors: 0,
        pending: FuturesOrdered::new(),
        names: Names::default(),
    };
    let end = conn.serve().await;
    tracing::debug!(device = %conn.device, ?end, "device connection ended");
    Box::pin(ws::close(&mut conn.socket, end, &conn.ingest.shutdown)).await;
    drop(registration);
}

impl Conn {
    async fn serve(&mut self) -> End {
        let shutdown = self.ingest.shutdown.clone();
        let replaced = self.replaced.clone();
        let last_seq = Box::pin(async {
            tokio::select! {
                r = durable_last_seq(self.ingest.clone(), self.device.clone()) => Ok(r),
                _ = shutdown.cancelled() => Err(End::Shutdown),
                _ = replaced.cancelled() => Err(End::Replaced),
            }
        });
        let last_seq = match last_seq.await {
            Ok(r) => r,
            Err(end) => return end,
        };
        let Some(last_seq) = last_seq else {
            return End::StoreFailed;
        };
        self.expected = last_seq.map(|s| s + 1);
        let ingest = self.ingest.clone();
        let welcome = WelcomeFrame::new(&self.device, last_seq.unwrap_or(0), &ingest.config.limits);
        let welcome = encode_frame(&welcome);
        if let Err(end) = self.send_msg(Outbound::Binary(welcome.into())).await {
            return end;
        }

        let server = &ingest.config.server;
        let mut keep_alive = KeepAlive::start(server.ping_interval, server.idle_timeout);

        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    Box::pin(self.drain_acks(shutdown.drain_deadline())).await;
                    return End::Shutdown;
                }
                _ = replaced.cancelled() => return End::Replaced,
                Some((seq, outcome)) = self.pending.next(), if !self.pending.is_empty() => {
                    // Boxed too: answering (acks gathered, a send) is
                    // the loop's largest await, and inline it sized every
                    // idle connection's task (BENCHMARKS.md, "Memory per
                    // idle device connection").
                    match Box::pin(self.answer_ready(seq, outcome)).await {
                        Ok(()) => {}
                        // Shutdown won over a send: the batches still
                        // pending are answered as in the branch above.
                        Err(End::Shutdown) => {
                            Box::pin(self.drain_acks(shutdown.drain_deadline())).await;
                            return End::Shutdown;
                        }
                        Err(end) => return end,
                    }
                }
                msg = self.socket.recv(), if self.pending.len() < MAX_IN_FLIGHT => {
                    keep_alive.activity();
                    match msg {
                        Err(end) => return end,
                        Ok(msg) => {
                            // Boxed for the same reason as a send (the
                            // decode and the queueing are large).
                            if let Err(end) = Box::pin(self.on_message(msg)).await {
                                return end;
                            }
                        }
                    }
                }
                due = keep_alive.due() => match due {
                    Due::Ping => {
                        if let Err(end) = self.send_msg(Outbound::Ping).await {
                            return end;
                        }
                    }
                    // A frame still arriving is activity too (SPEC §10).
                    Due::Idle if self.socket.take_progress() => keep_alive.activity(),
                    Due::Idle => return End::Idle,
                },
            }
        }
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), End> {
        match msg {
            Message::Binary(bytes) => self.on_frame(&bytes).await,
            Message::Text(_) => {
                let err = ErrorFrame::new(
                    None,
                    ErrorCode::UnsupportedFrame,
                    "frames must be binary MessagePack",
                );
                self.reject(err).await
            }
            Message::Close => Err(End::Gone),
            // The socket answers pings itself; both count as activity.
            Message::Ping | Message::Pong => Ok(()),
        }
    }

    async fn on_frame(&mut self, bytes: &[u8]) -> Result<(), End> {
        let limits = &self.ingest.config.limits;
        let batch = match decode_batch_with(bytes, limits.max_readings_per_frame, &mut self.names) {
            Ok(batch) => batch,
            Err(e) => {
                let err = ErrorFrame::new(e.seq, e.code, e.detail);
                return self.reject(err).await;
            }
        };
        self.consecutive_errors = 0;
        match (batch.seq, self.expected) {
            // Already stored, or queued ahead of this: the writer answers in
            // order, after the original is durable. No rate tokens spent.
            (Some(seq), Some(expected)) if seq < expected => {
                let probe = Batch {
                    seq: Some(seq),
                    readings: Vec::new(),
                };
                self.enqueue(probe).await
            }
            (Some(seq), Some(expected)) if seq > expected => {
                let mut err = ErrorFrame::new(
                    Some(seq),
                    ErrorCode::OutOfOrder,
                    format!("expected seq {expected}"),
                );
                err.expected = Some(expected);
                self.reject(err).await
            }
            _ => {
                if let Err(retry) = self
                    .ingest
                    .limiter
                    .check(&self.device, batch.readings.len())
                {
                    let mut err = ErrorFrame::new(
                        batch.seq,
                        ErrorCode::RateLimited,
                        format!("over {} readings/s", limits.readings_per_sec),
                    );
                    err.retry_after_ms = Some(retry.as_millis_ceil());
                    self.pin_retry(batch.seq);
                    return self.reject(err).await;
                }
                self.enqueue(batch).await
            }
        }
    }

    /// Queues a batch for the writer, waiting at most `enqueue_timeout` for
    /// room; a still-full queue answers `overloaded`.
    async fn enqueue(&mut self, batch: Batch) -> Result<(), End> {
        let seq = batch.seq;
        let (reply, rx) = match seq {
            Some(_) => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        // When the batch starts for the queue: its wait for room counts
        // from here, and so does the writer's gathering pause.
        let waiting = std::time::Instant::now();
        let request = WriteRequest::Batch(IngestBatch {
            device: self.device.clone(),
            seq,
            readings: batch.readings,
            received: crate::time::unix_ms(),
            queued: waiting,
            reply,
        });
        let timeout = self.ingest.config.ingest.enqueue_timeout;
        match self
            .ingest
            .writer
            .sender()
            .send_timeout(request, timeout)
            .await
        {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                let mut err = ErrorFrame::new(seq, ErrorCode::Overloaded, "ingest queue full");
                err.retry_after_ms = Some(overload_retry_ms(timeout));
                self.pin_retry(seq);
                return self.reject(err).await;
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => return Err(End::Shutdown),
        }
        // Where the wait for room ends and the wait for the outcome starts.
        let queued = std::time::Instant::now();
        if let (Some(seq), Some(rx)) = (seq, rx) {
            if self.expected.is_none_or(|e| seq >= e) {
                self.expected = Some(seq + 1);
            }
            self.pending.push_back(Box::pin(async move {
                let outcome = rx.await.unwrap_or(CommitOutcome::Failed);
                crate::events::BatchDecided {
                    waited: queued.elapsed(),
                }
                .emit();
                (seq, outcome)
            }));
        }
        crate::events::BatchAccepted {
            queue_wait: queued - waiting,
        }
        .emit();
        Ok(())
    }

    /// A batch the device must retry (rate limited, overloaded) fixes the
    /// next expected seq even for a device with no seq record yet: otherwise
    /// a pipelined later seq would be stored first, and the retried one then
    /// answered "duplicate" without ever being stored.
    fn pin_retry(&mut self, seq: Option<u64>) {
        if let Some(seq) = seq {
            if self.expected.is_none_or(|e| e > seq) {
                self.expected = Some(seq);
            }
        }
    }

    /// Answers `seq` and every later batch whose answer is also in, in
    /// order. The acks of stored batches go out in one write: a device's
    /// pipelined batches usually complete in the same group commit, and a
    /// write each was a syscall and a wake-up of the peer each.
    async fn answer_ready(&mut self, seq: u64, outcome: CommitOutcome) -> Result<(), End> {
        let mut acks = Vec::new();
        let (mut seq, mut outcome) = (seq, outcome);
        loop {
            if !matches!(outcome, CommitOutcome::Stored { .. }) {
                self.send_acks(&acks).await?;
                acks.clear();
                self.answer(seq, outcome).await?;
            } else {
                acks.push(seq);
            }
            // Polled with this task's own context: a reply not in yet wakes
            // the loop as usual.
            let next = std::future::poll_fn(|cx| Poll::Ready(self.pending.poll_next_unpin(cx)));
            match next.await {
                Poll::Ready(Some((s, o))) => (seq, outcome) = (s, o),
                Poll::Ready(None) | Poll::Pending => return self.send_acks(&acks).await,
            }
        }
    }

    /// The acks of stored batches `seqs`, in one write.
    async fn send_acks(&mut self, seqs: &[u64]) -> Result<(), End> {
        match seqs {
            [] => Ok(()),
            [seq] => self.send(&AckFrame::new(*seq, false)).await,
            _ => {
                let mut frames = Vec::with_capacity(seqs.len() * 24);
                for &seq in seqs {
                    ws::push_binary_frame(&mut frames, &encode_frame(&AckFrame::new(seq, false)));
                }
                self.send_msg(Outbound::Frames(frames.into())).await
            }
        }
    }

    /// Sends the answer for a batch the writer has decided.
    async fn answer(&mut self, seq: u64, outcome: CommitOutcome) -> Result<(), End> {
        let sent = match outcome {
            CommitOutcome::Stored { .. } => self.send(&AckFrame::new(seq, false)).await,
            CommitOutcome::Duplicate => {
                // Resends cost a writer round trip but no storage (and no
                // rate tokens, SPEC §10); counted on their own.
                crate::events::DuplicateBatch.emit();
                self.send(&AckFrame::new(seq, true)).await
            }
            CommitOutcome::OutOfOrder { expected } => {
                // The writer knows better (e.g. an older connection of this
                // device raced us): follow it.
                self.expected = Some(expected);
                let mut err = ErrorFrame::new(
                    Some(seq),
                    ErrorCode::OutOfOrder,
                    format!("expected seq {expected}"),
                );
                err.expected = Some(expected);
                self.send(&err).await
            }
            CommitOutcome::Failed | CommitOutcome::LastSeq(_) => {
                // Not stored: the device must send this seq again later.
                self.pin_retry(Some(seq));
                let mut err = ErrorFrame::new(
                    Some(seq),
                    ErrorCode::Overloaded,
                    "storage failed; not stored",
                );
                err.retry_after_ms = Some(1000);
                self.send(&err).await
            }
        };
        sent
    }

    /// Sends a rejection; too many malformed frames in a row end the
    /// connection with 1008.
    async fn reject(&mut self, err: ErrorFrame) -> Result<(), End> {
        crate::events::FrameRejected {
            code: err.code.as_str(),
        }
        .emit();
        let counts = err.code.counts_as_bad_frame();
        self.send(&err).await?;
        if counts {
            self.consecutive_errors += 1;
            if self.consecutive_errors >= self.ingest.config.limits.max_consecutive_errors {
                return Err(End::TooManyErrors);
            }
        }
        Ok(())
    }

    /// On shutdown: answers what the writer still decides by `deadline`, so
    /// every batch that becomes durable is acked before the 1001.
    async fn drain_acks(&mut self, deadline: Instant) {
        self.draining_until = Some(deadline);
        while let Ok(Some((seq, outcome))) =
            tokio::time::timeout_at(deadline, self.pending.next()).await
        {
            if self.answer(seq, outcome).await.is_err() {
                return;
            }
        }
    }

    async fn send<T: serde::Serialize>(&mut self, frame: &T) -> Result<(), End> {
        self.send_msg(Outbound::Binary(encode_frame(frame).into()))
            .await
    }

    /// Sends one message unless shutdown (once draining: the drain
    /// deadline), replacement or the write timeout comes first.
    async fn send_msg(&mut self, msg: Outbound) -> Result<(), End> {
        let write_timeout = self.ingest.config.server.idle_timeout;
        let draining = self.draining_until;
        let (shutdown, replaced) = (&self.ingest.shutdown, &self.replaced);
        let stop = async {
            let shutdown = async {
                match draining {
                    Some(by) => tokio::time::sleep_until(by).await,
                    None => shutdown.cancelled().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown => End::Shutdown,
                _ = replaced.cancelled() => End::Replaced,
            }
        };
        // Boxed: a send's timers are the biggest thing the loop would
        // otherwise carry inline, and every idle connection would pay for
        // them (a future is as large as its largest await).
        Box::pin(ws::send(
            &mut self.socket,
            msg,
            write_timeout,
            Peer::Device,
            stop,
        ))
        .await
    }
}

/// Asks the writer for the device's durable `last_seq`. `None` when the
/// store failed; `Some(None)` when the device has no seq record.
async fn durable_last_seq(ingest: Arc<Ingest>, device: Arc<str>) -> Option<Option<u64>> {
    let (tx, rx) = oneshot::channel();
    let req = WriteRequest::LastSeq { device, reply: tx };
    ingest.writer.sender().send(req).await.ok()?;
    match rx.await.ok()? {
        CommitOutcome::LastSeq(last) => Some(last),
        _ => None,
    }
}

/// A device waiting about as long as the queue did before trying again gives
/// the writer time to catch up.
fn overload_retry_ms(timeout: Duration) -> u64 {
    (timeout.as_millis() as u64).clamp(50, 5000)
}
