//! The hub: routes each durable (or relayed) reading to the subscribers
//! whose filters match it, without looking at subscribers that cannot.
//!
//! Every topic has exactly two levels (`<device>/<sensor>`), so every filter
//! reduces to one of four patterns over that pair — exact `d/s`, device-wide
//! `d/*`, sensor-wide `*/s`, or everything `*/*` — or to "matches nothing"
//! (see [`Pattern::of`]). The index keeps subscribers in four maps keyed by
//! those literals, so routing a reading is three hash look-ups whatever the
//! number of subscribers (subscribers to everything get one shared list of
//! the whole commit, or of each step of a big one), and the cost of a commit
//! grows with the deliveries it makes, not with the subscribers it skips.
//!
//! Routing runs on a runtime task, the [`Router`], which the writer thread
//! hands each commit to ([`CommitListener`]); it never waits for a
//! subscriber (each subscriber has its own bounded [`SubscriberQueue`]).
//! Why not on the writer thread, where it ran before: routing was a fifth
//! of that thread's time at goal 3, which every ack waited behind, and each
//! reading's item was allocated there and freed on the runtime's threads,
//! which made glibc's allocator slow on the writer (BENCHMARKS.md, "Routing
//! off the writer thread"). Subscriptions change under a short write lock.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::filter::{Level, TopicFilter};
use super::queue::SubscriberQueue;
use super::wire::{steps, Routed};
use crate::config::SlowPolicy;
use crate::protocol::Reading;
use crate::store::{Commit, CommitListener};

type SubId = u64;

/// Hashes a [`SubId`] with one multiplication. Routing looks a subscriber
/// up once per matching reading, and SipHash was a visible share of a
/// commit's cost with ten subscribers; ids are handed out by the hub, not
/// chosen by peers, so there is nothing to defend against.
#[derive(Default)]
struct SubIdHasher(u64);

impl std::hash::Hasher for SubIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads sequential ids over the top bits,
        // which the table's control bytes use.
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type SubIdMap<V> = HashMap<SubId, V, std::hash::BuildHasherDefault<SubIdHasher>>;

/// What a filter means over two-level topics: `None` is a wildcard level.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    Pair(Option<Arc<str>>, Option<Arc<str>>),
    /// Can never match a `<device>/<sensor>` topic (e.g. `a`, `a/b/c`).
    Never,
}

impl Pattern {
    pub fn of(f: &TopicFilter) -> Pattern {
        let lit = |l: &Level| match l {
            Level::Literal(s) => Some(Arc::<str>::from(s.as_str())),
            _ => None,
        };
        match f.levels() {
            [Level::Rest] => Pattern::Pair(None, None),
            [a, Level::Rest] => Pattern::Pair(lit(a), None),
            // `a/b/#` also matches its parent `a/b` in MQTT.
            [a, b] | [a, b, Level::Rest] if !matches!(b, Level::Rest) => {
                Pattern::Pair(lit(a), lit(b))
            }
            _ => Pattern::Never,
        }
    }
}

/// Subscribers under one index key, with how many of each one's filters
/// reduce to that key (so unsubscribing one of two keeps the other).
type Subs = SubIdMap<(Arc<SubscriberQueue>, u32)>;

#[derive(Default)]
struct Index {
    exact: HashMap<Arc<str>, HashMap<Arc<str>, Subs>>,
    by_device: HashMap<Arc<str>, Subs>,
    by_sensor: HashMap<Arc<str>, Subs>,
    all: Subs,
}

impl Index {
    fn slot(&mut self, p: &Pattern) -> Option<&mut Subs> {
        match p {
            Pattern::Never => None,
            Pattern::Pair(Some(d), Some(s)) => Some(
                self.exact
                    .entry(d.clone())
                    .or_default()
                    .entry(s.clone())
                    .or_default(),
            ),
            Pattern::Pair(Some(d), None) => Some(self.by_device.entry(d.clone()).or_default()),
            Pattern::Pair(None, Some(s)) => Some(self.by_sensor.entry(s.clone()).or_default()),
            Pattern::Pair(None, None) => Some(&mut self.all),
        }
    }

    /// Drops empty maps so the index stays as small as the live subscriptions.
    fn tidy(&mut self, p: &Pattern) {
        match p {
            Pattern::Pair(Some(d), Some(s)) => {
                if let Some(m) = self.exact.get_mut(d) {
                    if m.get(s).is_some_and(|x| x.is_empty()) {
                        m.remove(s);
                    }
                    if m.is_empty() {
                        self.exact.remove(d);
                    }
                }
            }
            Pattern::Pair(Some(d), None) if self.by_device.get(d).is_some_and(|x| x.is_empty()) => {
                self.by_device.remove(d);
            }
            Pattern::Pair(None, Some(s)) if self.by_sensor.get(s).is_some_and(|x| x.is_empty()) => {
                self.by_sensor.remove(s);
            }
            _ => {}
        }
    }

    /// Every subscriber's queue (once per index key it is under).
    fn queues(&self) -> impl Iterator<Item = &Arc<SubscriberQueue>> {
        let exact = self.exact.values().flat_map(|m| m.values());
        exact
            .chain(self.by_device.values())
            .chain(self.by_sensor.values())
            .chain(std::iter::once(&self.all))
            .flat_map(|subs| subs.values().map(|(q, _)| q))
    }

    /// Calls `f` for every subscriber entry matching `device/sensor`
    /// through a filter narrower than `#` (a subscriber with several
    /// matching filters is seen more than once). Subscribers to everything
    /// (`all`) match every reading and are routed per commit instead.
    fn for_each_narrow_match(
        &self,
        device: &str,
        sensor: &str,
        mut f: impl FnMut(SubId, &Arc<SubscriberQueue>),
    ) {
        let mut visit = |subs: Option<&Subs>| {
            for (id, (q, _)) in subs.into_iter().flatten() {
                f(*id, q);
            }
        };
        visit(self.exact.get(device).and_then(|m| m.get(sensor)));
        visit(self.by_device.get(device));
        visit(self.by_sensor.get(sensor));
    }
}

/// The fan-out hub, one per daemon.
pub struct Hub {
    index: RwLock<Index>,
    next_id: AtomicU64,
    /// Highest stored id whose commit has been fully routed.
    announced: AtomicU64,
    subscribers: AtomicU64,
    queue_capacity: usize,
    policy: SlowPolicy,
    /// Tests: routing a list starting at this id panics.
    #[cfg(test)]
    panic_at: AtomicU64,
}

impl Hub {
    pub fn new(queue_capacity: usize, policy: SlowPolicy) -> Arc<Hub> {
        Arc::new(Hub {
            index: RwLock::new(Index::default()),
            next_id: AtomicU64::new(1),
            announced: AtomicU64::new(0),
            subscribers: AtomicU64::new(0),
            queue_capacity,
            policy,
            #[cfg(test)]
            panic_at: AtomicU64::new(0),
        })
    }

    /// The index, even if a panic poisoned its lock. Changes under the
    /// write lock are a few map inserts and removals that cannot panic
    /// short of a bug; routing under the read lock does not poison it. A
    /// poisoned lock must not also take down every later subscription,
    /// unsubscription (inside `Drop`, where a second panic aborts) and
    /// commit.
    fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn index_mut(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new subscriber with no filters yet; dropping it unsubscribes all.
    pub fn subscriber(self: &Arc<Self>) -> Subscriber {
        let n = self.subscribers.fetch_add(1, Ordering::Relaxed) + 1;
        crate::events::SubscribersConnected(n).emit();
        Subscriber {
            hub: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            queue: Arc::new(SubscriberQueue::new(self.queue_capacity, self.policy)),
            patterns: Vec::new(),
        }
    }

    /// The highest stored id whose commit has been routed to every queue.
    /// Any live item with a smaller id is already queued.
    pub fn announced(&self) -> u64 {
        self.announced.load(Ordering::Acquire)
    }

    /// Routes durable readings (one commit, in id order) to subscribers.
    pub fn publish(&self, commit: &Arc<Commit>) {
        self.route(step(commit, 0..commit.len()));
        self.announce(commit);
    }

    /// [`Hub::publish`] for the router task: a big commit (up to 2,048
    /// batches) is routed [`ROUTE_STEP`] readings at a time, letting the
    /// worker's other tasks run in between.
    async fn publish_in_steps(&self, commit: &Arc<Commit>) {
        for range in steps(commit.len(), ROUTE_STEP) {
            if range.start > 0 {
                tokio::task::yield_now().await;
            }
            self.route(step(commit, range));
        }
        self.announce(commit);
    }

    /// Everything up to the last of `readings` (one commit) is routed.
    fn announce(&self, readings: &[Reading]) {
        if let Some(last) = readings.last() {
            self.announced.fetch_max(last.id, Ordering::AcqRel);
        }
    }

    /// Ids up to `last_id` were stored before the hub started: none of them
    /// will be routed, so a subscriber's replay seam at or below it can
    /// retire once its queue is empty.
    pub fn stored_before_start(&self, last_id: u64) {
        self.announced.fetch_max(last_id, Ordering::AcqRel);
    }

    /// Delivers readings relayed from another instance (`mqtt.relay`,
    /// SPEC §10) to matching live subscribers: not stored, not replayed,
    /// fields kept as the origin sent them, plus `"origin": origin`. Never
    /// blocks; call it from the bridge's task as messages arrive.
    pub fn publish_relayed(&self, origin: &str, readings: Vec<Reading>) {
        self.route(Routed::new(readings, Some(origin.into())));
    }

    fn route(&self, routed: Routed) {
        // Pushing under the read lock means that once a subscription change
        // (write lock) returns, no routing decided before it is in flight.
        let index = self.index();
        let routed = Arc::new(routed);
        // Subscribers to everything share the list. The others get the
        // readings their filters match, in one list per set of matches
        // (subscribers with the same matches share it, and its encodings),
        // so each queue is locked once per call rather than once per reading.
        let everything = !index.all.is_empty();
        let mut narrow: SubIdMap<Narrow> = SubIdMap::default();
        let mut deliveries = 0u64;
        for (n, r) in routed.readings().iter().enumerate() {
            index.for_each_narrow_match(&r.device, &r.sensor, |id, q| {
                if everything && index.all.contains_key(&id) {
                    return; // it has this reading through `#` already
                }
                let matched = narrow.entry(id).or_insert_with(|| Narrow {
                    queue: q.clone(),
                    matched: Vec::new(),
                });
                // A subscriber matched through two filters gets it once.
                if matched.matched.last() != Some(&n) {
                    matched.matched.push(n);
                    deliveries += 1;
                }
            });
        }
        if everything {
            for (q, _) in index.all.values() {
                q.push(routed.clone());
                deliveries += routed.len() as u64;
            }
        }
        let mut lists: HashMap<Vec<usize>, Vec<Arc<SubscriberQueue>>> = HashMap::new();
        for (_, n) in narrow {
            lists.entry(n.matched).or_default().push(n.queue);
        }
        for (matched, queues) in lists {
            let readings = matched.iter().map(|&n| routed.readings()[n].clone());
            let list = Arc::new(Routed::new(readings.collect(), routed.origin().cloned()));
            for q in queues {
                q.push(list.clone());
            }
        }
        #[cfg(test)]
        if routed.readings().first().map(|r| r.id) == Some(self.panic_at.load(Ordering::Relaxed)) {
            panic!("deliberate routing panic");
        }
        drop(index);
        if deliveries > 0 {
            crate::events::Delivered(deliveries).emit();
        }
    }
}

/// The readings of one routing that one subscriber's filters narrower than
/// `#` match, by their index in what was routed.
struct Narrow {
    queue: Arc<SubscriberQueue>,
    matched: Vec<usize>,
}

/// What is routed of readings `range` of `commit`: a range of the commit
/// itself, which the list then keeps alive, if the commit has at most
/// [`SHARE_COMMIT_UP_TO`] readings; else a copy of the range.
fn step(commit: &Arc<Commit>, range: std::ops::Range<usize>) -> Routed {
    if commit.len() <= SHARE_COMMIT_UP_TO {
        Routed::of_commit(commit, range)
    } else {
        Routed::new(commit[range].to_vec(), None)
    }
}

/// The biggest commit whose readings subscribers to everything share with
/// the store and the writer rather than a copy: a queue's lists of it keep
/// all of it alive (about 1.7 MB at most) until the last is taken (or
/// written, for a frame spliced from it: [`super::wire::live_frame`]). Commits
/// in the flood are a few thousand readings; a bigger one (up to 2,048
/// batches) would let a slow subscriber pin far more than its queue holds.
pub const SHARE_COMMIT_UP_TO: usize = 4 * ROUTE_STEP;

/// Commits the writer has handed over and the router has not taken yet.
/// A full queue makes the writer wait: the runtime is then too busy to
/// route, and the wait pushes back on ingest through the writer's queue.
/// Small, because a commit can be big (up to 2,048 batches): with the one
/// being routed and the one the writer holds while it waits, at most four
/// commits' readings wait for the router. At goal 3 (about 1,100 commits
/// a second, each routed in tens of µs) the writer found it full 8 to 15
/// times in 22,000 commits; in the flood, 32 to 63 times in 10 s.
pub const ROUTER_QUEUE: usize = 2;

/// Readings routed in one go by the router task before it yields.
pub const ROUTE_STEP: usize = 4096;

/// The writer's side of the router: a [`CommitListener`] that queues each
/// commit for [`Hub::spawn_router`]'s task, in commit order.
pub struct Router {
    tx: mpsc::Sender<Arc<Commit>>,
    /// The router task is gone: said once.
    gone: std::sync::atomic::AtomicBool,
}

impl Hub {
    /// Starts the task that routes commits, on `tracker`. It ends once the
    /// returned [`Router`] is dropped (with the writer, at the drain) and
    /// what was queued is routed.
    pub fn spawn_router(self: &Arc<Self>, tracker: &TaskTracker) -> Arc<Router> {
        let (tx, mut rx) = mpsc::channel::<Arc<Commit>>(ROUTER_QUEUE);
        let hub = self.clone();
        tracker.spawn(async move {
            while let Some(readings) = rx.recv().await {
                let routed = AssertUnwindSafe(hub.publish_in_steps(&readings))
                    .catch_unwind()
                    .await;
                if let Err(panic) = routed {
                    hub.routing_failed(&readings, &*panic);
                }
            }
        });
        Arc::new(Router {
            tx,
            gone: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Routing `readings` panicked part-way: some subscribers may have
    /// missed some of them, and a live stream must have no gap (SPEC §4).
    /// Every current subscriber is closed (1011) so that it subscribes
    /// again with `since` and has them replayed from the store; later
    /// subscribers read their seam from the store, which holds the commit
    /// already. Routing goes on with the next commit.
    fn routing_failed(&self, readings: &[Reading], panic: &(dyn std::any::Any + Send)) {
        // Nothing of this commit will be routed any more: seams under it
        // may retire (a closed subscriber's seams no longer matter).
        self.announce(readings);
        let index = self.index();
        let mut closed = 0usize;
        for q in index.queues() {
            if !q.is_closed() {
                q.fail();
                closed += 1;
            }
        }
        drop(index);
        tracing::error!(
            panic = %crate::store::panic_message(panic),
            readings = readings.len(),
            subscribers_closed = closed,
            "routing a commit to /v1/stream subscribers panicked; \
             they were closed, to resubscribe with since"
        );
    }
}

impl CommitListener for Router {
    fn on_commit(&self, readings: &Arc<Commit>) {
        let handed = match self.tx.try_send(readings.clone()) {
            Ok(()) => true,
            // Called on the writer thread, outside the runtime: it may block.
            Err(mpsc::error::TrySendError::Full(readings)) => {
                self.tx.blocking_send(readings).is_ok()
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        };
        // The task outlives the writer, unless the runtime is going away
        // (nobody is left to deliver to).
        if !handed && !self.gone.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "the fan-out router has stopped: no more live readings for /v1/stream subscribers"
            );
        }
    }
}

/// One connection's registration with the hub.
pub struct Subscriber {
    hub: Arc<Hub>,
    id: SubId,
    queue: Arc<SubscriberQueue>,
    /// Every pattern this subscriber holds in the index (with repeats).
    patterns: Vec<Pattern>,
}

impl Subscriber {
    pub fn queue(&self) -> &Arc<SubscriberQueue> {
        &self.queue
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Starts live delivery for `filters`. Readings routed after this
    /// returns are queued; ones routed before are not.
    pub fn add(&mut self, filters: &[TopicFilter]) {
        let mut index = self.hub.index_mut();
        for f in filters {
            let p = Pattern::of(f);
            if let Some(slot) = index.slot(&p) {
                slot.entry(self.id)
                    .or_insert_with(|| (self.queue.clone(), 0))
                    .1 += 1;
                self.patterns.push(p);
            }
        }
    }

    /// Stops live delivery for `filters` (each must have been added).
    /// Items already queued for them stay queued.
    pub fn remove(&mut self, filters: &[TopicFilter]) {
        let mut index = self.hub.index_mut();
        for f in filters {
            let p = Pattern::of(f);
            let Some(pos) = self.patterns.iter().position(|x| *x == p) else {
                continue;
            };
            self.patterns.swap_remove(pos);
            Self::unindex(&mut index, self.id, &p);
        }
    }

    fn unindex(index: &mut Index, id: SubId, p: &Pattern) {
        if let Some(slot) = index.slot(p) {
            if let Some(e) = slot.get_mut(&id) {
                e.1 -= 1;
                if e.1 == 0 {
                    slot.remove(&id);
                }
            }
        }
        index.tidy(p);
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let mut index = self.hub.index_mut();
        for p in std::mem::take(&mut self.patterns) {
            Self::unindex(&mut index, self.id, &p);
        }
        drop(index);
        let n = self.hub.subscribers.fetch_sub(1, Ordering::Relaxed) - 1;
        crate::events::SubscribersConnected(n).emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::queue::{Closed, Taken};
    use crate::protocol::Value;

    fn reading(id: u64, d: &str, s: &str) -> Reading {
        Reading {
            id,
            device: d.into(),
            sensor: s.into(),
            ts: 0,
            value: Value::Int(id as i64),
            unit: None,
            received: 0,
        }
    }

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    fn ids(sub: &Subscriber) -> Vec<u64> {
        sub.queue().take(1000).readings().map(|r| r.id).collect()
    }

    /// A subscriber to `filters`.
    fn subscribed(hub: &Arc<Hub>, filters: &[&str]) -> Subscriber {
        let mut sub = hub.subscriber();
        sub.add(&filters.iter().map(|s| f(s)).collect::<Vec<_>>());
        sub
    }

    fn commit_of(readings: Vec<Reading>) -> Arc<Commit> {
        Arc::new(Commit::from(readings))
    }

    #[test]
    fn patterns_agree_with_filter_matching() {
        let topics = [("d1", "temp"), ("d1", "hum"), ("d2", "temp")];
        for s in [
            "d1/temp",
            "+/temp",
            "d1/+",
            "d1/#",
            "#",
            "+/+",
            "+/#",
            "d1/temp/#",
            "+",
            "d1",
            "d1/temp/x",
            "a/b/c/#",
            "+/+/#",
        ] {
            let filter = f(s);
            let p = Pattern::of(&filter);
            for (d, sn) in topics {
                let by_pattern = match &p {
                    Pattern::Never => false,
                    Pattern::Pair(a, b) => {
                        a.as_deref().is_none_or(|a| a == d) && b.as_deref().is_none_or(|b| b == sn)
                    }
                };
                assert_eq!(by_pattern, filter.matches(d, sn), "{s} vs {d}/{sn}");
            }
        }
    }

    #[test]
    fn subscribers_to_everything_share_a_commit_and_get_each_reading_once() {
        let hub = Hub::new(100, SlowPolicy::DropOldest);
        let mut all = hub.subscriber();
        all.add(&[f("#")]);
        let mut both = hub.subscriber();
        both.add(&[f("d1/temp"), f("#"), f("+/hum")]);
        let mut narrow = hub.subscriber();
        narrow.add(&[f("d1/temp")]);
        let commit = commit_of(vec![
            reading(1, "d1", "temp"),
            reading(2, "d2", "hum"),
            reading(3, "d1", "x"),
        ]);
        hub.publish(&commit);
        // One list, the commit's own readings: nothing copied.
        let (a, b) = (all.queue().take(10), both.queue().take(10));
        let (ra, rb): (Vec<_>, Vec<_>) = (a.runs().collect(), b.runs().collect());
        assert_eq!((ra.len(), rb.len()), (1, 1));
        assert!(Arc::ptr_eq(ra[0].0, rb[0].0), "one list, shared");
        assert_eq!(ra[0].0.readings().as_ptr(), commit.as_ptr());
        assert_eq!(a.readings().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(ids(&narrow), vec![1]);
        // Dropping `#` leaves the narrower filters routed per reading.
        both.remove(&[f("#")]);
        hub.publish(&commit_of(vec![
            reading(4, "d1", "temp"),
            reading(5, "d3", "hum"),
            reading(6, "d3", "x"),
        ]));
        assert_eq!(ids(&all), vec![4, 5, 6]);
        assert_eq!(ids(&both), vec![4, 5]);
        assert_eq!(ids(&narrow), vec![4]);
    }

    /// The writer hands commits over from its own thread. With the router
    /// held up, it waits for room once the router queue is full, and loses
    /// nothing: every commit is routed, in commit order, and the task ends
    /// once the router is dropped and its queue is routed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_router_routes_every_commit_in_order_then_ends() {
        let hub = Hub::new(10_000, SlowPolicy::DropOldest);
        let mut all = hub.subscriber();
        all.add(&[f("#")]);
        let tracker = TaskTracker::new();
        let router = hub.spawn_router(&tracker);
        let commits = 3 * ROUTER_QUEUE as u64;
        // Routing needs the index: holding it stops the router.
        let held = hub.index.write().unwrap();
        let writer = std::thread::spawn(move || {
            for id in 1..=commits {
                let commit = Arc::new(Commit::from(vec![reading(id, "d1", "temp")]));
                router.on_commit(&commit);
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!writer.is_finished(), "the writer waits for room");
        drop(held);
        writer.join().unwrap();
        tracker.close();
        tokio::time::timeout(std::time::Duration::from_secs(10), tracker.wait())
            .await
            .expect("the router ends once dropped");
        assert_eq!(ids(&all), (1..=commits).collect::<Vec<_>>());
        assert_eq!(hub.announced(), commits);
    }

    /// A commit whose routing panics closes every subscriber it may have
    /// missed (to resubscribe with `since`), and the router goes on with
    /// the next commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_panic_while_routing_closes_subscribers_and_routing_goes_on() {
        let hub = Hub::new(10_000, SlowPolicy::DropOldest);
        let mut all = hub.subscriber();
        all.add(&[f("#")]);
        let mut narrow = hub.subscriber();
        narrow.add(&[f("d1/temp")]);
        hub.panic_at.store(3, Ordering::Relaxed);
        let tracker = TaskTracker::new();
        let router = hub.spawn_router(&tracker);
        let commit = |ids: std::ops::Range<u64>| -> Arc<Commit> {
            Arc::new(ids.map(|id| reading(id, "d1", "temp")).collect())
        };
        router.on_commit(&commit(1..3));
        router.on_commit(&commit(3..5));
        let wait = std::time::Duration::from_secs(10);
        for sub in [&all, &narrow] {
            tokio::time::timeout(wait, sub.queue().closed().cancelled())
                .await
                .expect("closed after the failed commit");
            assert_eq!(sub.queue().why_closed(), Closed::RoutingFailed);
        }
        assert_eq!(hub.announced(), 4, "the failed commit is not waited for");
        // A subscriber that comes after it still gets live readings.
        let mut later = hub.subscriber();
        later.add(&[f("d1/+")]);
        router.on_commit(&commit(5..7));
        drop(router);
        tracker.close();
        tokio::time::timeout(wait, tracker.wait())
            .await
            .expect("the router ends once dropped");
        assert_eq!(ids(&later), vec![5, 6]);
        assert!(!later.queue().closed().is_cancelled());
        assert_eq!(hub.announced(), 6);
        assert_eq!(ids(&all)[..2], [1, 2], "routed before the panic");
    }

    /// A commit bigger than a routing step is routed a step at a time, the
    /// router yielding in between, and announced only once all of it is
    /// queued (a seam must not retire while part of it is still to come).
    /// On the current-thread runtime a probe task runs whenever the router
    /// yields, and takes what is queued.
    #[tokio::test]
    async fn a_big_commit_is_routed_in_steps_and_announced_whole() {
        let hub = Hub::new(3 * ROUTE_STEP, SlowPolicy::DropOldest);
        let mut all = hub.subscriber();
        all.add(&[f("#")]);
        let mut narrow = hub.subscriber();
        narrow.add(&[f("d2/temp")]);
        let tracker = TaskTracker::new();
        let router = hub.spawn_router(&tracker);
        let n = 2 * ROUTE_STEP as u64 + 5;
        let commit: Arc<Commit> = Arc::new(
            (1..=n)
                .map(|id| reading(id, if id % 2 == 0 { "d2" } else { "d1" }, "temp"))
                .collect(),
        );
        // Room in the queue: this does not block the runtime's thread.
        router.on_commit(&commit);
        drop(router);
        let probe_hub = hub.clone();
        let probe = tokio::spawn(async move {
            let (mut ids, mut seen) = (Vec::new(), Vec::new());
            while (ids.len() as u64) < n {
                let taken = all.queue().take(usize::MAX);
                if !taken.is_empty() {
                    ids.extend(taken.readings().map(|r| r.id));
                    seen.push((ids.len() as u64, probe_hub.announced()));
                }
                tokio::task::yield_now().await;
            }
            (ids, seen)
        });
        let (ids, seen) = tokio::time::timeout(std::time::Duration::from_secs(10), probe)
            .await
            .expect("the whole commit is routed")
            .unwrap();
        assert_eq!(ids, (1..=n).collect::<Vec<_>>());
        assert!(seen.len() > 1, "routed in one go: {seen:?}");
        for (queued, announced) in &seen {
            let whole = if *queued == n { n } else { 0 };
            assert_eq!(*announced, whole, "{seen:?}");
        }
        tracker.close();
        tokio::time::timeout(std::time::Duration::from_secs(10), tracker.wait())
            .await
            .expect("the router ends once dropped");
        let taken: Vec<u64> = narrow
            .queue()
            .take(3 * ROUTE_STEP)
            .readings()
            .map(|r| r.id)
            .collect();
        assert_eq!(taken, (1..=n).filter(|id| id % 2 == 0).collect::<Vec<_>>());
    }

    #[test]
    fn subscribers_with_the_same_matches_share_one_list() {
        let hub = Hub::new(100, SlowPolicy::DropOldest);
        let a = subscribed(&hub, &["d1/#"]);
        let b = subscribed(&hub, &["d1/temp", "d1/hum"]);
        let c = subscribed(&hub, &["d1/temp"]);
        hub.publish(&commit_of(vec![
            reading(1, "d1", "temp"),
            reading(2, "d2", "temp"),
            reading(3, "d1", "hum"),
        ]));
        let taken = [a.queue().take(10), b.queue().take(10), c.queue().take(10)];
        let lists: Vec<&Routed> = taken
            .iter()
            .map(|t| &**t.runs().next().unwrap().0)
            .collect();
        assert!(std::ptr::eq(lists[0], lists[1]), "a and b match 1 and 3");
        assert!(!std::ptr::eq(lists[0], lists[2]), "c matches 1 only");
        let ids = |t: &Taken| t.readings().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(&taken[0]), [1, 3]);
        assert_eq!(ids(&taken[2]), [1]);
    }

    /// A commit bigger than [`SHARE_COMMIT_UP_TO`] is copied step by step:
    /// a slow subscriber's list does not keep all of it alive.
    #[test]
    fn a_big_commit_is_not_shared_with_the_queues() {
        let hub = Hub::new(10 * SHARE_COMMIT_UP_TO, SlowPolicy::DropOldest);
        let mut all = hub.subscriber();
        all.add(&[f("#")]);
        let n = SHARE_COMMIT_UP_TO as u64 + 1;
        let commit = commit_of((1..=n).map(|id| reading(id, "d1", "temp")).collect());
        hub.publish(&commit);
        assert_eq!(Arc::strong_count(&commit), 1, "no list holds the commit");
        let taken = all.queue().take(usize::MAX);
        assert_eq!(taken.readings().count() as u64, n);
        let small = commit_of(vec![reading(n + 1, "d1", "temp")]);
        hub.publish(&small);
        assert_eq!(Arc::strong_count(&small), 2, "a small one is shared");
    }

    #[test]
    fn relayed_readings_go_live_with_their_origin() {
        let hub = Hub::new(100, SlowPolicy::DropOldest);
        let mut a = hub.subscriber();
        a.add(&[f("+/temp")]);
        let mut all = hub.subscriber();
        all.add(&[f("#")]);
        hub.publish_relayed(
            "sensorgate-b-8750",
            vec![reading(900, "d9", "temp"), reading(901, "d9", "x")],
        );
        for (sub, ids) in [(&a, vec![900]), (&all, vec![900, 901])] {
            let taken = sub.queue().take(10);
            assert_eq!(taken.readings().map(|r| r.id).collect::<Vec<_>>(), ids);
            for (list, _) in taken.runs() {
                assert_eq!(list.origin().map(|o| &**o), Some("sensorgate-b-8750"));
            }
        }
        assert_eq!(hub.announced(), 0, "relayed ids are not this instance's");
    }

    #[test]
    fn routes_only_to_matching_subscribers_once_each() {
        let hub = Hub::new(100, SlowPolicy::DropOldest);
        let mut a = hub.subscriber();
        a.add(&[f("d1/#"), f("+/temp")]);
        let mut b = hub.subscriber();
        b.add(&[f("d2/hum")]);
        hub.publish(&commit_of(vec![
            reading(1, "d1", "temp"),
            reading(2, "d2", "temp"),
            reading(3, "d2", "hum"),
        ]));
        assert_eq!(ids(&a), vec![1, 2]);
        assert_eq!(ids(&b), vec![3]);
        a.remove(&[f("+/temp")]);
        hub.publish(&commit_of(vec![
            reading(4, "d2", "temp"),
            reading(5, "d1", "x"),
        ]));
        assert_eq!(ids(&a), vec![5]);
        drop(a);
        drop(b);
        let idx = hub.index.read().unwrap();
        assert!(idx.exact.is_empty() && idx.by_device.is_empty() && idx.all.is_empty());
    }
}
