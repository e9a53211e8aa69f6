//! The hand-over from the reader to the prefetch stage: the reader adds what
//! each socket read gave (a few events, or one when the server sends an HTTP
//! chunk per event); the prefetch stage takes them a chunk at a time.
//!
//! A channel of per-read vectors would wake the taker once per read, and
//! every wake-up costs a spin, a few `sched_yield`s and a futex call on each
//! side. Here the taker is woken only when its wait may end: the first item
//! in an empty hand-over, then a full chunk (or the end). Once it has
//! something it waits up to `wait` for the chunk to fill, then takes what
//! there is: a slow stream is handed on within `wait`, a fast one in full
//! chunks.
//!
//! Bounded: the giver waits while `capacity` items wait to be taken (what
//! one give adds may go past it by that give's size).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

struct State<T> {
    items: Vec<T>,
    /// The giver is gone: what is left is the end of input.
    closed: bool,
    /// The taker is gone: giving fails.
    gone: bool,
    taker_waiting: bool,
    giver_waiting: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// For the taker: something to take.
    ready: Condvar,
    /// For the giver: room.
    room: Condvar,
    capacity: usize,
    chunk: usize,
    wait: Duration,
}

/// The reader's end; dropping it ends the input.
pub(crate) struct Giver<T> {
    shared: Arc<Shared<T>>,
}

/// The prefetch stage's end; dropping it makes giving fail.
pub(crate) struct Taker<T> {
    shared: Arc<Shared<T>>,
}

/// The taker has gone: nothing given will be taken.
#[derive(Debug)]
pub(crate) struct Gone;

/// A hand-over of up to `capacity` waiting items, taken `chunk` at a time
/// after waiting up to `wait` for a chunk to fill.
pub(crate) fn gather<T>(capacity: usize, chunk: usize, wait: Duration) -> (Giver<T>, Taker<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: Vec::with_capacity(chunk),
            closed: false,
            gone: false,
            taker_waiting: false,
            giver_waiting: false,
        }),
        ready: Condvar::new(),
        room: Condvar::new(),
        capacity: capacity.max(1),
        chunk: chunk.max(1),
        wait,
    });
    (
        Giver {
            shared: shared.clone(),
        },
        Taker { shared },
    )
}

impl<T> Giver<T> {
    /// Moves all of `items` into the hand-over (leaving `items` empty, its
    /// capacity kept), waiting while it is full.
    pub(crate) fn give(&self, items: &mut Vec<T>) -> Result<(), Gone> {
        if items.is_empty() {
            return Ok(());
        }
        let s = &self.shared;
        let mut st = s.state.lock().expect("not poisoned");
        while st.items.len() >= s.capacity && !st.gone {
            st.giver_waiting = true;
            st = s.room.wait(st).expect("not poisoned");
            st.giver_waiting = false;
        }
        if st.gone {
            items.clear();
            return Err(Gone);
        }
        let before = st.items.len();
        st.items.append(items);
        let after = st.items.len();
        if st.taker_waiting && (before == 0 || (before < s.chunk && after >= s.chunk)) {
            s.ready.notify_one();
        }
        Ok(())
    }
}

impl<T> Drop for Giver<T> {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.closed = true;
        self.shared.ready.notify_all();
    }
}

impl<T> Taker<T> {
    /// The next chunk of up to `chunk` items, in the order given; `None`
    /// once the giver is gone and everything was taken.
    pub(crate) fn take(&self) -> Option<Vec<T>> {
        let s = &self.shared;
        let mut st = s.state.lock().expect("not poisoned");
        while st.items.is_empty() && !st.closed {
            st.taker_waiting = true;
            st = s.ready.wait(st).expect("not poisoned");
            st.taker_waiting = false;
        }
        if st.items.is_empty() {
            return None;
        }
        let until = Instant::now() + s.wait;
        while st.items.len() < s.chunk && !st.closed {
            let now = Instant::now();
            if now >= until {
                break;
            }
            st.taker_waiting = true;
            st = s
                .ready
                .wait_timeout(st, until - now)
                .expect("not poisoned")
                .0;
            st.taker_waiting = false;
        }
        let taken = if st.items.len() <= s.chunk {
            std::mem::replace(&mut st.items, Vec::with_capacity(s.chunk))
        } else {
            let rest = st.items.split_off(s.chunk);
            std::mem::replace(&mut st.items, rest)
        };
        if st.giver_waiting && st.items.len() < s.capacity {
            s.room.notify_one();
        }
        Some(taken)
    }
}

impl<T> Drop for Taker<T> {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.gone = true;
        st.items.clear();
        self.shared.room.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_in_order_in_chunks_and_the_end_is_seen() {
        let (giver, taker) = gather::<u32>(100, 4, Duration::from_millis(1));
        let mut v: Vec<u32> = (0..10).collect();
        giver.give(&mut v).unwrap();
        assert!(v.is_empty());
        drop(giver);
        let mut got = Vec::new();
        while let Some(chunk) = taker.take() {
            assert!(chunk.len() <= 4);
            got.extend(chunk);
        }
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_lone_item_is_handed_on_after_the_wait_not_held_for_a_chunk() {
        let (giver, taker) = gather::<u32>(100, 128, Duration::from_millis(20));
        giver.give(&mut vec![7]).unwrap();
        let started = Instant::now();
        assert_eq!(taker.take(), Some(vec![7]));
        // The giver is still there: the taker waited for more, then gave up.
        assert!(started.elapsed() >= Duration::from_millis(15));
        drop(giver);
        assert_eq!(taker.take(), None);
    }

    #[test]
    fn a_full_chunk_ends_the_takers_wait_at_once() {
        let (giver, taker) = gather::<u32>(1000, 8, Duration::from_secs(60));
        let t = std::thread::spawn(move || taker.take());
        // Give one item (the taker starts to wait for a chunk), then the rest.
        giver.give(&mut vec![0]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        giver.give(&mut (1..8).collect()).unwrap();
        let got = t.join().unwrap();
        assert_eq!(got, Some((0..8).collect::<Vec<_>>()));
    }

    #[test]
    fn the_giver_waits_while_full_and_fails_once_the_taker_is_gone() {
        let (giver, taker) = gather::<u32>(4, 4, Duration::ZERO);
        giver.give(&mut vec![1, 2, 3, 4]).unwrap();
        let giver = std::thread::spawn(move || {
            // Full: this waits until the taker takes.
            let first = giver.give(&mut vec![5]);
            // Then the taker is dropped while this one waits.
            giver.give(&mut vec![6, 7, 8, 9]).unwrap();
            let second = giver.give(&mut vec![10]);
            (first.is_ok(), second.is_err())
        });
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(taker.take(), Some(vec![1, 2, 3, 4]));
        // Wait for the next give to land, then leave.
        let deadline = Instant::now() + Duration::from_secs(10);
        while taker.shared.state.lock().unwrap().items.len() < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(taker);
        assert_eq!(giver.join().unwrap(), (true, true));
    }
}
