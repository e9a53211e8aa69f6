//! The pipeline's window: the events admitted by the prefetch stage and not
//! yet taken by the batcher, bounded in count (`queue.size`) and in bytes.
//!
//! It is what the fetch stage sees ahead: the attached files of every event
//! in the window are being fetched, so with requests that take `L` seconds
//! the run goes at most `queue.size / L` events per second. It is also the
//! memory held between the reader and the batch: whatever the number of
//! workers and the size of the events, at most `queue.size` events and
//! [`WINDOW_BYTES`] of their data (or one chunk, when it is larger by itself).

use std::sync::{Arc, Condvar, Mutex};

/// Bytes of event data in the window, at most (one chunk larger than this
/// is admitted alone).
pub(crate) const WINDOW_BYTES: usize = 8 << 20;

/// Room for events between two stages; see the module documentation.
pub(crate) struct Window {
    max_events: usize,
    max_bytes: usize,
    used: Mutex<Used>,
    room: Condvar,
}

#[derive(Default)]
struct Used {
    events: usize,
    bytes: usize,
    /// Admissions waiting for room (woken only when there are some).
    waiting: usize,
}

/// Events admitted into the window; their room is given back when dropped.
pub(crate) struct Admitted {
    window: Arc<Window>,
    events: usize,
    bytes: usize,
}

impl Window {
    pub(crate) fn new(max_events: usize, max_bytes: usize) -> Arc<Window> {
        Arc::new(Window {
            max_events: max_events.max(1),
            max_bytes: max_bytes.max(1),
            used: Mutex::new(Used::default()),
            room: Condvar::new(),
        })
    }

    /// Waits until `events` events of `bytes` bytes fit, or the window is
    /// empty (a chunk larger than the window passes alone).
    pub(crate) fn admit(self: &Arc<Self>, events: usize, bytes: usize) -> Admitted {
        let mut used = self.used.lock().expect("not poisoned");
        while used.events > 0
            && (used.events + events > self.max_events || used.bytes + bytes > self.max_bytes)
        {
            used.waiting += 1;
            used = self.room.wait(used).expect("not poisoned");
            used.waiting -= 1;
        }
        used.events += events;
        used.bytes += bytes;
        Admitted {
            window: self.clone(),
            events,
            bytes,
        }
    }

    /// Events and bytes in the window now.
    #[cfg(test)]
    fn used(&self) -> (usize, usize) {
        let used = self.used.lock().expect("not poisoned");
        (used.events, used.bytes)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut used = self.window.used.lock().expect("not poisoned");
        used.events -= self.events;
        used.bytes -= self.bytes;
        let wake = used.waiting > 0;
        drop(used);
        if wake {
            self.window.room.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn admission_waits_for_room_in_events_and_in_bytes() {
        let w = Window::new(10, 1000);
        let a = w.admit(6, 100);
        let b = w.admit(4, 100);
        assert_eq!(w.used(), (10, 200));
        let (tx, rx) = std::sync::mpsc::channel();
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            let c = w2.admit(1, 10);
            tx.send(()).unwrap();
            c
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "admitted past the event limit"
        );
        drop(a);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("admitted once room was given back");
        let c = t.join().unwrap();
        assert_eq!(w.used(), (5, 110));
        drop((b, c));
        assert_eq!(w.used(), (0, 0));

        let big = w.admit(1, 5000);
        assert_eq!(
            w.used(),
            (1, 5000),
            "a chunk larger than the window passes alone"
        );
        let w2 = w.clone();
        let t = std::thread::spawn(move || w2.admit(1, 1));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "admitted past the byte limit");
        drop(big);
        drop(t.join().unwrap());
        assert_eq!(w.used(), (0, 0));
    }
}
