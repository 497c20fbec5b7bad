//! One subscriber connection on `/v1/stream` (SPEC §4), after the upgrade.
//!
//! The loop owns the connection's subscriptions and its replay seams; the
//! hub only fills its bounded queue. Ops are answered in order; a replay
//! (`since`) runs inline, so live readings queue up behind it and go out
//! after it. The seam: filters are registered with the hub *before* the
//! store's newest id `L` is read, the store is replayed up to `L`, and
//! queued live readings with `id <= L` that the replay covered are dropped.
//! Every reading with `id > L` comes live (its commit was announced after
//! the registration), every reading `<= L` was durable before the replay
//! read: no gap, no duplicate.
//!
//! Bounded: every send gives way to shutdown and to the hub giving up on
//! the queue (an overflow under `disconnect`, or a failed routing), and
//! fails after `server.idle_timeout` (a peer that reads nothing loses its
//! socket: [`ws::send`]); the replay reads the store in steps of at most
//! [`ScanBound::REQUEST`], looking at the socket and the queue between
//! steps. Close codes and the keep-alive are [`crate::ws`]'s.

use std::sync::Arc;
use std::time::Duration;

use crate::shutdown::Shutdown;

use super::hub::{Hub, Subscriber};
use super::queue::{Closed, SubscriberQueue, Taken};
use super::wire::{
    decode_op, live_frame, readings_frame, steps, Encoding, ErrorCode, Frame, LiveRun, Notice, Op,
    Routed,
};
use super::TopicFilter;
use crate::config::Config;
use crate::protocol::Reading;
use crate::store::{ScanBound, Store};
use crate::ws::{self, Due, End, KeepAlive, Message, Outbound, Peer, Socket};

/// Readings per `readings` frame (live and replay).
const FRAME_ITEMS: usize = 500;
/// Readings read from the store per replay page (each page also stops at
/// [`ScanBound::REQUEST`]).
const REPLAY_PAGE: usize = 2000;
/// Ops a client may send during a replay before we stop looking at the
/// socket until the replay is done.
const MAX_DEFERRED: usize = 16;
/// Frames sent per wake-up before the loop looks at the socket again.
const FRAMES_PER_TURN: usize = 8;
/// Filters one connection may hold, so the index stays bounded per socket.
const MAX_FILTERS: usize = 256;

/// What the handshake decided.
pub struct Params {
    pub encoding: Encoding,
    /// The token's `topics` claim (`None`: anything).
    pub allowed: Option<Vec<TopicFilter>>,
    /// `topic=` values of the URL (raw).
    pub topics: Vec<String>,
    /// `since=` of the URL (raw).
    pub since: Option<String>,
}

/// Live readings with `id <= floor` matching `filters` but not `prior`
/// were (or would have been) replayed: drop them from the live queue.
struct Seam {
    floor: u64,
    filters: Arc<Vec<TopicFilter>>,
    prior: Arc<Vec<TopicFilter>>,
}

struct Session {
    socket: Socket,
    enc: Encoding,
    sub: Subscriber,
    queue: Arc<SubscriberQueue>,
    store: Arc<Store>,
    allowed: Option<Vec<TopicFilter>>,
    filters: Vec<TopicFilter>,
    seams: Vec<Seam>,
    shutdown: Shutdown,
    /// Ops received during a replay, answered after it.
    deferred: std::collections::VecDeque<Message>,
    /// A send the peer does not take within this (`server.idle_timeout`)
    /// ends the connection ([`End::Stalled`]: no close frame).
    write_timeout: Duration,
}

/// The readings of `taken` that `keep` accepts, as the fewest runs of
/// their lists, in order; a list `whole` says all of is not looked into.
fn runs_kept<'t>(
    taken: &'t Taken,
    whole: impl Fn(&Routed) -> bool,
    keep: impl Fn(&Reading, &Routed) -> bool,
) -> Vec<LiveRun<'t>> {
    let mut runs = Vec::new();
    for (list, range) in taken.runs() {
        if whole(list) {
            runs.push((list, range));
            continue;
        }
        let readings = list.readings();
        let mut start = range.start;
        for n in range.clone() {
            if !keep(&readings[n], list) {
                if start < n {
                    runs.push((list, start..n));
                }
                start = n + 1;
            }
        }
        if start < range.end {
            runs.push((list, start..range.end));
        }
    }
    runs
}

/// How a session ends once the hub gave up on its queue.
fn closed_end(queue: &SubscriberQueue) -> End {
    match queue.why_closed() {
        Closed::Overflowed => End::Lagged,
        Closed::RoutingFailed => End::RoutingFailed,
    }
}

/// Serves the connection until it ends; every ending but a vanished or
/// stalled peer sends a close frame (1001 shutdown, 4008 too slow, 1000
/// idle, 1011 when live readings were missed).
pub async fn run(
    socket: Socket,
    hub: Arc<Hub>,
    store: Arc<Store>,
    config: Arc<Config>,
    shutdown: Shutdown,
    params: Params,
) {
    let sub = hub.subscriber();
    let queue = sub.queue().clone();
    let mut s = Session {
        socket,
        enc: params.encoding,
        sub,
        queue,
        store,
        allowed: params.allowed,
        filters: Vec::new(),
        seams: Vec::new(),
        shutdown,
        write_timeout: config.server.idle_timeout,
        deferred: Default::default(),
    };
    let end = s.serve(&config, params.topics, params.since).await;
    tracing::debug!(?end, "subscriber connection ended");
    let Session {
        mut socket,
        sub,
        shutdown,
        ..
    } = s;
    if matches!(end, End::Lagged | End::RoutingFailed) {
        // Free the queue's share of memory now; only the socket remains.
        drop(sub);
    }
    ws::close(&mut socket, end, &shutdown).await;
}

impl Session {
    async fn serve(&mut self, config: &Config, topics: Vec<String>, since: Option<String>) -> End {
        if let Err(end) = self.initial(topics, since).await {
            return end;
        }
        let server = &config.server;
        let mut keep_alive = KeepAlive::start(server.ping_interval, server.idle_timeout);
        let shutdown = self.shutdown.clone();
        let queue = self.queue.clone();
        let closed = queue.closed().clone();
        loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Err(End::Shutdown),
                _ = closed.cancelled() => Err(closed_end(&queue)),
                msg = self.socket.recv() => {
                    keep_alive.activity();
                    match msg {
                        Err(end) => Err(end),
                        Ok(msg) => self.on_message_and_deferred(msg).await,
                    }
                }
                _ = queue.notified() => self.flush_queue(false).await,
                due = keep_alive.due() => match due {
                    Due::Ping => self.send_msg(Outbound::Ping).await,
                    // A frame still arriving is activity too (SPEC §10).
                    Due::Idle if self.socket.take_progress() => {
                        keep_alive.activity();
                        Ok(())
                    }
                    Due::Idle => Err(End::Idle),
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// `topic=`/`since=` from the URL, answered like a subscribe op.
    async fn initial(&mut self, topics: Vec<String>, since: Option<String>) -> Result<(), End> {
        let since = match since.as_deref() {
            None | Some("") => None,
            Some(s) => match s.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    let detail = format!("since: not a non-negative integer: {s:?}");
                    return self
                        .notice(&Notice::error(ErrorCode::Invalid, detail))
                        .await;
                }
            },
        };
        if topics.is_empty() {
            if since.is_some() {
                let detail = "since= needs at least one topic=";
                return self
                    .notice(&Notice::error(ErrorCode::Invalid, detail))
                    .await;
            }
            return Ok(());
        }
        self.subscribe(topics, since).await
    }

    /// Answers `msg`, then any op that arrived while it was being answered.
    async fn on_message_and_deferred(&mut self, msg: Message) -> Result<(), End> {
        self.on_message(msg).await?;
        while let Some(msg) = self.deferred.pop_front() {
            self.on_message(msg).await?;
        }
        Ok(())
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), End> {
        let op = match &msg {
            Message::Text(t) => decode_op(Some(t.as_str()), None),
            Message::Binary(b) => decode_op(None, Some(b)),
            Message::Close => return Err(End::Gone),
            Message::Ping | Message::Pong => return Ok(()),
        };
        match op {
            Ok(Op::Subscribe { topics, since }) => self.subscribe(topics, since).await,
            Ok(Op::Unsubscribe { topics }) => self.unsubscribe(topics).await,
            Err(detail) => {
                self.notice(&Notice::error(ErrorCode::Invalid, detail))
                    .await
            }
        }
    }

    /// Parses and authorizes filters; the error is the notice to send.
    fn check_filters(&self, topics: &[String]) -> Result<Vec<TopicFilter>, Notice> {
        if topics.is_empty() {
            return Err(Notice::error(
                ErrorCode::Invalid,
                "topics must not be empty",
            ));
        }
        let mut out = Vec::with_capacity(topics.len());
        for t in topics {
            let f = TopicFilter::parse(t)
                .map_err(|e| Notice::error(ErrorCode::Invalid, e.to_string()))?;
            if let Some(allowed) = &self.allowed {
                if !allowed.iter().any(|a| a.covers(&f)) {
                    return Err(Notice::error(
                        ErrorCode::Forbidden,
                        format!("topic {f} is outside this token's topics"),
                    ));
                }
            }
            if !out.contains(&f) {
                out.push(f);
            }
        }
        Ok(out)
    }

    async fn subscribe(&mut self, topics: Vec<String>, since: Option<u64>) -> Result<(), End> {
        let requested = match self.check_filters(&topics) {
            Ok(f) => f,
            Err(notice) => return self.notice(&notice).await,
        };
        let new: Vec<TopicFilter> = requested
            .iter()
            .filter(|f| !self.filters.contains(f))
            .cloned()
            .collect();
        if self.filters.len() + new.len() > MAX_FILTERS {
            let detail = format!("at most {MAX_FILTERS} topic filters per connection");
            return self
                .notice(&Notice::error(ErrorCode::Invalid, detail))
                .await;
        }
        self.retire_seams();
        let prior = Arc::new(self.filters.clone());
        // Register first, then read the seam: see the module docs.
        self.sub.add(&new);
        self.filters.extend(new.iter().cloned());
        let last_id = self.store.last_id();
        let new = Arc::new(new);
        if !new.is_empty() {
            self.seams.push(Seam {
                floor: last_id,
                filters: new.clone(),
                prior: prior.clone(),
            });
        }
        let topics = requested.iter().map(ToString::to_string).collect();
        self.notice(&Notice::Subscribed { topics, last_id }).await?;
        if let Some(since) = since {
            self.replay(since, last_id, new, prior).await?;
        }
        Ok(())
    }

    /// Sends stored readings with `since < id <= upto` matching `filters`
    /// and not `prior` (those were flowing live already).
    async fn replay(
        &mut self,
        since: u64,
        upto: u64,
        filters: Arc<Vec<TopicFilter>>,
        prior: Arc<Vec<TopicFilter>>,
    ) -> Result<(), End> {
        let store = self.store.clone();
        let oldest = self.blocking(move || store.oldest_id()).await?;
        let truncated = match oldest {
            Some(oldest) => (since.saturating_add(1) < oldest).then_some(oldest),
            // Nothing retained although ids were handed out past `since`.
            None => (since < upto).then_some(upto + 1),
        };
        if let Some(oldest_id) = truncated {
            self.notice(&Notice::Truncated { oldest_id }).await?;
        }
        let mut cursor = since;
        while cursor < upto && !filters.is_empty() {
            let (store, f, p) = (self.store.clone(), filters.clone(), prior.clone());
            let page = self
                .blocking(move || {
                    store.read_page(cursor, REPLAY_PAGE, ScanBound::REQUEST, &|| false, |r| {
                        r.id <= upto
                            && f.iter().any(|x| x.matches(&r.device, &r.sensor))
                            && !p.iter().any(|x| x.matches(&r.device, &r.sensor))
                    })
                })
                .await?;
            cursor = page.scanned_to;
            let list = Routed::new(page.items, None);
            for range in steps(list.len(), FRAME_ITEMS) {
                self.send(readings_frame(self.enc, &[(&list, range)]))
                    .await?;
            }
            if page.reached_end {
                break;
            }
            // Each step is bounded; between steps, stop if the peer left
            // (a replay that matches nothing sends nothing to notice it by).
            self.check_peer()?;
        }
        Ok(())
    }

    /// Looks at the queue and the socket without waiting: the hub giving
    /// up on the queue, a close or a broken socket ends the session; an op
    /// that arrived meanwhile is kept (at most [`MAX_DEFERRED`]) and
    /// answered after the current one.
    fn check_peer(&mut self) -> Result<(), End> {
        if self.queue.is_closed() {
            return Err(closed_end(&self.queue));
        }
        if self.deferred.len() >= MAX_DEFERRED {
            return Ok(());
        }
        match self.socket.try_recv() {
            None => Ok(()),
            Some(Err(end)) => Err(end),
            Some(Ok(Message::Close)) => Err(End::Gone),
            Some(Ok(msg)) => {
                self.deferred.push_back(msg);
                Ok(())
            }
        }
    }

    async fn unsubscribe(&mut self, topics: Vec<String>) -> Result<(), End> {
        let mut removed = Vec::new();
        for t in &topics {
            match TopicFilter::parse(t) {
                Ok(f) => {
                    if let Some(pos) = self.filters.iter().position(|x| *x == f) {
                        removed.push(self.filters.remove(pos));
                    }
                }
                Err(e) => {
                    let notice = Notice::error(ErrorCode::Invalid, e.to_string());
                    return self.notice(&notice).await;
                }
            }
        }
        if topics.is_empty() {
            let notice = Notice::error(ErrorCode::Invalid, "topics must not be empty");
            return self.notice(&notice).await;
        }
        self.sub.remove(&removed);
        // Whatever was routed before the removal is queued now; send it,
        // minus what no remaining filter wants, before acknowledging.
        self.flush_queue(true).await?;
        let topics = removed.iter().map(ToString::to_string).collect();
        self.notice(&Notice::Unsubscribed { topics }).await
    }

    /// Sends queued live readings. `recheck` drains the whole queue and
    /// drops items no current filter matches (after an unsubscribe);
    /// otherwise at most [`FRAMES_PER_TURN`] frames go out per call.
    async fn flush_queue(&mut self, recheck: bool) -> Result<(), End> {
        let announced = self.sub.hub().announced();
        let mut frames = 0;
        loop {
            // Given up on (overflow, failed routing): what is queued may
            // have a gap, and must not go out.
            if self.queue.is_closed() {
                return Err(closed_end(&self.queue));
            }
            if !recheck && frames == FRAMES_PER_TURN {
                // Come back after looking at the socket and the timers.
                self.queue.wake();
                return Ok(());
            }
            let taken = self.queue.take(FRAME_ITEMS);
            if taken.dropped > 0 {
                crate::events::SlowSubscriber::Lagged.emit();
                self.notice(&Notice::Lagged {
                    dropped: taken.dropped,
                })
                .await?;
            }
            if taken.is_empty() {
                break;
            }
            let runs = self.wanted_runs(&taken, recheck);
            if !runs.is_empty() {
                let frame = live_frame(self.enc, &runs);
                // The lists are kept alive by the frame only if it is
                // spliced from them (`live_frame` says when).
                drop(runs);
                drop(taken);
                self.send(frame).await?;
                frames += 1;
            }
        }
        // The queue was empty after every commit up to `announced` had been
        // routed: no live item at or below a seam under it can come any more.
        self.seams.retain(|s| s.floor > announced);
        Ok(())
    }

    /// Drops the seams no live item can fall under any more, as
    /// [`Session::flush_queue`] does after draining the queue: here only if
    /// it is empty. So a client that subscribes again and again while no
    /// reading flows does not pile them up.
    fn retire_seams(&mut self) {
        // Read before looking at the queue: every item up to `announced`
        // was queued before it was raised.
        let announced = self.sub.hub().announced();
        if self.queue.is_empty() {
            self.seams.retain(|s| s.floor > announced);
        }
    }

    /// The readings of `taken` to send, as runs of their lists: all of
    /// them unless a seam or (`recheck`) the filters leave some out.
    fn wanted_runs<'t>(&self, taken: &'t Taken, recheck: bool) -> Vec<LiveRun<'t>> {
        runs_kept(
            taken,
            |list| !recheck && (self.seams.is_empty() || list.is_relayed()),
            |r, list| self.wanted(r, list.is_relayed(), recheck),
        )
    }

    fn wanted(&self, r: &Reading, relayed: bool, recheck: bool) -> bool {
        if recheck && !self.filters.iter().any(|f| f.matches(&r.device, &r.sensor)) {
            return false;
        }
        if relayed {
            return true; // another instance's ids: no seam applies
        }
        !self.seams.iter().any(|s| {
            r.id <= s.floor
                && s.filters.iter().any(|f| f.matches(&r.device, &r.sensor))
                && !s.prior.iter().any(|f| f.matches(&r.device, &r.sensor))
        })
    }

    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, End>> + Send + 'static {
        let shutdown = self.shutdown.clone();
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => Err(End::Shutdown),
                r = tokio::task::spawn_blocking(f) => match r {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "subscriber replay: store read failed");
                        Err(End::Gone)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "subscriber replay task failed");
                        Err(End::Gone)
                    }
                },
            }
        }
    }

    async fn notice(&mut self, n: &Notice) -> Result<(), End> {
        self.send(n.encode(self.enc)).await
    }

    async fn send(&mut self, frame: Frame) -> Result<(), End> {
        let msg = match frame {
            Frame::Text(t) => Outbound::Text(t.into()),
            Frame::Binary(b) => Outbound::Binary(b),
            Frame::Spliced { text, pieces } => Outbound::Spliced { text, pieces },
        };
        self.send_msg(msg).await
    }

    /// Sends one message, giving up at shutdown, when the hub gives up on
    /// the queue, or after the write timeout (a peer that does not read
    /// never holds us).
    async fn send_msg(&mut self, msg: Outbound) -> Result<(), End> {
        let (shutdown, queue) = (&self.shutdown, &self.queue);
        let stop = async {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => End::Shutdown,
                _ = queue.closed().cancelled() => closed_end(queue),
            }
        };
        ws::send(
            &mut self.socket,
            msg,
            self.write_timeout,
            Peer::Subscriber,
            stop,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SlowPolicy;

    fn list(ids: std::ops::Range<u64>) -> Arc<Routed> {
        Arc::new(Routed::of_ids(ids))
    }

    /// Runs as (first id, last id) pairs; an empty run fails the test.
    fn spans(runs: &[LiveRun<'_>]) -> Vec<(u64, u64)> {
        runs.iter()
            .map(|(list, r)| {
                let readings = &list.readings()[r.clone()];
                assert!(!readings.is_empty(), "an empty run");
                (readings[0].id, readings[readings.len() - 1].id)
            })
            .collect()
    }

    #[test]
    fn runs_leave_out_exactly_what_is_not_kept_cutting_lists_anywhere() {
        let q = SubscriberQueue::new(100, SlowPolicy::DropOldest);
        q.push(list(1..6));
        q.push(list(6..9));
        q.push(list(9..12));
        // The take starts inside the first list.
        let _ = q.take(1);
        let taken = q.take(100);
        let kept = |r: &Reading, _: &Routed| ![2, 5, 6, 7, 10].contains(&r.id);
        let runs = runs_kept(&taken, |_| false, kept);
        assert_eq!(spans(&runs), [(3, 4), (8, 8), (9, 9), (11, 11)]);
        // Nothing left out: one run per list, as taken.
        let runs = runs_kept(&taken, |_| false, |_, _| true);
        assert_eq!(spans(&runs), [(2, 5), (6, 8), (9, 11)]);
        // Everything left out: no run at all.
        assert!(runs_kept(&taken, |_| false, |_, _| false).is_empty());
        // A list taken whole is not looked into.
        let runs = runs_kept(&taken, |l| l.readings()[0].id == 6, kept);
        assert_eq!(spans(&runs), [(3, 4), (6, 8), (9, 9), (11, 11)]);
    }
}
