//! Process-wide state plugins share across workers: key-value data with compare-and-swap,
//! queues, and metrics. Shared data and queues are keyed by vm_id, as in Envoy.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;

use crate::abi::{MetricType, Status};

/// One vm_id's shared data: key -> (value, CAS).
type VmData = HashMap<String, (Bytes, u32)>;

/// Everything plugins share across workers.
#[derive(Default)]
pub struct Shared {
    data: Mutex<HashMap<String, VmData>>,
    next_cas: AtomicU64,
    queues: Mutex<Queues>,
    pub metrics: Metrics,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
    next_id: u32,
}

struct Queue {
    items: VecDeque<Bytes>,
    /// Root contexts that registered the queue, woken with `proxy_on_queue_ready`.
    subscribers: Vec<(UnboundedSender<(u32, u32)>, u32)>,
}

impl Shared {
    pub fn get_data(&self, vm_id: &str, key: &str) -> Option<(Bytes, u32)> {
        self.data
            .lock()
            .expect("shared data lock")
            .get(vm_id)?
            .get(key)
            .cloned()
    }

    /// Sets a value. With `cas != 0` the write only happens if the value's CAS still matches.
    pub fn set_data(&self, vm_id: &str, key: &str, value: Bytes, cas: u32) -> Status {
        let mut data = self.data.lock().expect("shared data lock");
        // Keys are allocated only when new: counters are rewritten on every request.
        if !data.contains_key(vm_id) {
            data.insert(vm_id.to_owned(), VmData::default());
        }
        let entries = data.get_mut(vm_id).expect("inserted above");
        // CAS values are never 0 and never reused.
        let next = || (self.next_cas.fetch_add(1, Relaxed) % u32::MAX as u64) as u32 + 1;
        match entries.get_mut(key) {
            Some((_, current)) if cas != 0 && *current != cas => Status::CasMismatch,
            Some(entry) => {
                *entry = (value, next());
                Status::Ok
            }
            None => {
                entries.insert(key.to_owned(), (value, next()));
                Status::Ok
            }
        }
    }

    /// Registers (or re-registers) a queue; `notify` receives `(root_context_id, queue_id)`.
    pub fn register_queue(
        &self,
        vm_id: &str,
        name: &str,
        notify: UnboundedSender<(u32, u32)>,
        root: u32,
    ) -> u32 {
        let mut q = self.queues.lock().expect("queue lock");
        let key = (vm_id.to_owned(), name.to_owned());
        let id = match q.by_name.get(&key) {
            Some(id) => *id,
            None => {
                q.next_id += 1;
                let id = q.next_id;
                q.by_name.insert(key, id);
                q.queues.insert(
                    id,
                    Queue {
                        items: VecDeque::new(),
                        subscribers: Vec::new(),
                    },
                );
                id
            }
        };
        let queue = q.queues.get_mut(&id).expect("queue just found");
        queue
            .subscribers
            .retain(|(tx, r)| !(tx.is_closed() || tx.same_channel(&notify) && *r == root));
        queue.subscribers.push((notify, root));
        id
    }

    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        let q = self.queues.lock().expect("queue lock");
        q.by_name.get(&(vm_id.to_owned(), name.to_owned())).copied()
    }

    pub fn enqueue(&self, id: u32, value: Bytes) -> Status {
        let mut q = self.queues.lock().expect("queue lock");
        let Some(queue) = q.queues.get_mut(&id) else {
            return Status::NotFound;
        };
        queue.items.push_back(value);
        queue
            .subscribers
            .retain(|(tx, root)| tx.send((*root, id)).is_ok());
        Status::Ok
    }

    pub fn dequeue(&self, id: u32) -> Result<Bytes, Status> {
        let mut q = self.queues.lock().expect("queue lock");
        let queue = q.queues.get_mut(&id).ok_or(Status::NotFound)?;
        queue.items.pop_front().ok_or(Status::Empty)
    }
}

/// Metrics plugins define, exported on the admin's `/stats/prometheus`.
#[derive(Default)]
pub struct Metrics {
    by_name: Mutex<HashMap<String, u32>>,
    list: RwLock<Vec<Arc<Metric>>>,
}

pub struct Metric {
    pub name: String,
    pub kind: MetricType,
    /// Counter or gauge value; for a histogram, the number of records.
    pub value: AtomicI64,
    /// Histogram: sum of recorded values and counts per power-of-two bucket.
    pub sum: AtomicU64,
    pub buckets: [AtomicU64; 32],
}

impl Metrics {
    /// Defines a metric or returns the id it already has. Ids start at 1.
    pub fn define(&self, kind: MetricType, name: &str) -> (u32, Arc<Metric>) {
        let mut by_name = self.by_name.lock().expect("metrics lock");
        if let Some(id) = by_name.get(name) {
            let metric = self.list.read().expect("metrics lock")[*id as usize - 1].clone();
            return (*id, metric);
        }
        let metric = Arc::new(Metric {
            name: name.to_owned(),
            kind,
            value: AtomicI64::new(0),
            sum: AtomicU64::new(0),
            buckets: Default::default(),
        });
        let mut list = self.list.write().expect("metrics lock");
        list.push(metric.clone());
        let id = list.len() as u32;
        by_name.insert(name.to_owned(), id);
        (id, metric)
    }

    pub fn get(&self, id: u32) -> Option<Arc<Metric>> {
        let list = self.list.read().expect("metrics lock");
        list.get((id as usize).checked_sub(1)?).cloned()
    }

    /// All metrics, for export.
    pub fn all(&self) -> Vec<Arc<Metric>> {
        self.list.read().expect("metrics lock").clone()
    }
}

impl Metric {
    pub fn record(&self, value: u64) {
        match self.kind {
            MetricType::Histogram => {
                let bucket = (64 - value.leading_zeros()).min(31) as usize;
                self.buckets[bucket].fetch_add(1, Relaxed);
                self.sum.fetch_add(value, Relaxed);
                self.value.fetch_add(1, Relaxed);
            }
            _ => self.value.store(value as i64, Relaxed),
        }
    }

    pub fn increment(&self, delta: i64) -> Status {
        match self.kind {
            MetricType::Counter if delta < 0 => Status::BadArgument,
            MetricType::Histogram => Status::BadArgument,
            _ => {
                self.value.fetch_add(delta, Relaxed);
                Status::Ok
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_rejects_stale_writes() {
        let s = Shared::default();
        assert_eq!(
            s.set_data("vm", "k", Bytes::from_static(b"1"), 0),
            Status::Ok
        );
        let (_, cas) = s.get_data("vm", "k").unwrap();
        assert_eq!(
            s.set_data("vm", "k", Bytes::from_static(b"2"), cas),
            Status::Ok
        );
        assert_eq!(
            s.set_data("vm", "k", Bytes::from_static(b"3"), cas),
            Status::CasMismatch
        );
        assert_eq!(s.get_data("vm", "k").unwrap().0, "2");
        assert!(s.get_data("other-vm", "k").is_none(), "keyed by vm_id");
    }

    #[test]
    fn queues_wake_their_subscribers() {
        let s = Shared::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let id = s.register_queue("vm", "q", tx, 7);
        assert_eq!(s.resolve_queue("vm", "q"), Some(id));
        assert_eq!(s.dequeue(id), Err(Status::Empty));
        assert_eq!(s.enqueue(id, Bytes::from_static(b"x")), Status::Ok);
        assert_eq!(rx.try_recv().unwrap(), (7, id));
        assert_eq!(s.dequeue(id).unwrap(), "x");
        assert_eq!(s.enqueue(99, Bytes::new()), Status::NotFound);
    }

    #[test]
    fn metrics_are_shared_by_name() {
        let m = Metrics::default();
        let (a, counter) = m.define(MetricType::Counter, "requests");
        let (b, _) = m.define(MetricType::Counter, "requests");
        assert_eq!(a, b);
        assert_eq!(counter.increment(2), Status::Ok);
        assert_eq!(counter.increment(-1), Status::BadArgument);
        assert_eq!(m.get(a).unwrap().value.load(Relaxed), 2);
    }
}
