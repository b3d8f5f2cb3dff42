//! A test-and-set spinlock built on atomics (no `static mut`).
//!
//! The console lock is one of these. `try_lock` and `force_unlock` exist for
//! the panic path, which must never wait forever on a lock held by a CPU it
//! has stopped (Linux's console trylock / `bust_spinlocks`). The lock word
//! records who holds it (`lock_as`), so an NMI or exception handler can tell
//! that it interrupted its own CPU's critical section instead of spinning
//! on it forever.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};

/// Lock word when free.
const FREE: u32 = 0;
/// Owner tag of [`SpinLock::lock`] / [`SpinLock::try_lock`].
pub const ANONYMOUS: u32 = u32::MAX - 1;

/// A spinlock protecting a `T`.
#[derive(Debug)]
pub struct SpinLock<T> {
    /// `FREE`, or the holder's tag + 1.
    state: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out at most one guard at a time, so sharing the lock
// between CPUs only ever gives one of them access to the `T`.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// An unlocked lock around `value`.
    pub const fn new(value: T) -> Self {
        Self {
            state: AtomicU32::new(FREE),
            value: UnsafeCell::new(value),
        }
    }

    /// Spins until the lock is free, then takes it.
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        self.lock_as(ANONYMOUS)
    }

    /// Spins until the lock is free, then takes it for `owner` (a CPU
    /// number, below [`ANONYMOUS`]).
    pub fn lock_as(&self, owner: u32) -> SpinLockGuard<'_, T> {
        loop {
            if let Some(guard) = self.try_lock_as(owner) {
                return guard;
            }
            while self.is_locked() {
                core::hint::spin_loop();
            }
        }
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        self.try_lock_as(ANONYMOUS)
    }

    /// Takes the lock for `owner` if it is free.
    pub fn try_lock_as(&self, owner: u32) -> Option<SpinLockGuard<'_, T>> {
        let tag = owner.min(ANONYMOUS) + 1;
        self.state
            .compare_exchange(FREE, tag, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinLockGuard { lock: self })
    }

    /// Whether some holder has the lock right now.
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) != FREE
    }

    /// The tag of the current holder, if any.
    pub fn owner(&self) -> Option<u32> {
        self.state.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Releases the lock without a guard.
    ///
    /// # Safety
    ///
    /// The holder must never touch the value again (for example: it is a CPU
    /// the panic path has stopped for good), or two users race on the `T`.
    pub unsafe fn force_unlock(&self) {
        self.state.store(FREE, Ordering::Release);
    }
}

/// Proof of holding a [`SpinLock`]; unlocks on drop.
#[derive(Debug)]
pub struct SpinLockGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this holder owns the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while this holder owns the lock, and
        // `&mut self` makes this the only reference through the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.state.store(FREE, Ordering::Release);
    }
}

/// A value set once (at boot) and read from anywhere afterwards, without
/// locks (so a stopped CPU can never block a reader).
#[derive(Debug)]
pub struct SetOnce<T: Copy> {
    state: AtomicU32,
    value: UnsafeCell<Option<T>>,
}

// SAFETY: the value is written once, before `state` becomes SET (Release),
// and only read after observing SET (Acquire); no writer runs after that.
unsafe impl<T: Copy + Send> Sync for SetOnce<T> {}

const UNSET: u32 = 0;
const SETTING: u32 = 1;
const SET: u32 = 2;

impl<T: Copy> SetOnce<T> {
    /// Not set yet.
    pub const fn new() -> Self {
        Self {
            state: AtomicU32::new(UNSET),
            value: UnsafeCell::new(None),
        }
    }

    /// Sets the value; false if it was already set (or being set).
    pub fn set(&self, v: T) -> bool {
        if self
            .state
            .compare_exchange(UNSET, SETTING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // SAFETY: the CAS above made this the only writer, and readers only
        // look after SET is published below.
        unsafe { *self.value.get() = Some(v) };
        self.state.store(SET, Ordering::Release);
        true
    }

    /// The value, once set.
    pub fn get(&self) -> Option<T> {
        if self.state.load(Ordering::Acquire) != SET {
            return None;
        }
        // SAFETY: SET is stored only after the single write completed.
        unsafe { *self.value.get() }
    }
}

impl<T: Copy> Default for SetOnce<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn set_once_sets_once() {
        let o = SetOnce::new();
        assert_eq!(o.get(), None);
        assert!(o.set(3u8));
        assert!(!o.set(4));
        assert_eq!(o.get(), Some(3));
    }

    use super::*;
    use std::sync::Arc;

    #[test]
    fn try_lock_fails_while_held() {
        let lock = SpinLock::new(1u32);
        let guard = lock.try_lock().expect("free lock");
        assert!(lock.is_locked());
        assert!(lock.try_lock().is_none());
        drop(guard);
        assert!(!lock.is_locked());
        assert!(lock.try_lock().is_some());
    }

    #[test]
    fn owner_is_recorded() {
        let lock = SpinLock::new(());
        assert_eq!(lock.owner(), None);
        let g = lock.lock_as(3);
        assert_eq!(lock.owner(), Some(3));
        assert!(lock.try_lock_as(3).is_none(), "not reentrant");
        drop(g);
        assert_eq!(lock.owner(), None);
        let g = lock.lock();
        assert_eq!(lock.owner(), Some(ANONYMOUS));
        drop(g);
        let _g = lock.lock_as(0);
        assert_eq!(lock.owner(), Some(0));
    }

    #[test]
    fn force_unlock_frees_a_leaked_lock() {
        let lock = SpinLock::new(0u8);
        std::mem::forget(lock.lock());
        assert!(lock.try_lock().is_none());
        // SAFETY: the leaked guard is never used again.
        unsafe { lock.force_unlock() };
        assert!(lock.try_lock().is_some());
    }

    #[test]
    fn lock_serialises_threads() {
        let lock = Arc::new(SpinLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let mut g = lock.lock();
                        let v = *g;
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 40_000);
    }
}
