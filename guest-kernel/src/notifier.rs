//! Panic notifier chains: which notifiers run on which step, in what order.
//!
//! Each notifier belongs to one of the proposal-2022 lists (info,
//! hypervisor, reboot) and has a priority; within a list, higher priority
//! runs first, equal priorities in registration order (Linux's
//! `notifier_chain_register`). The Linux and Linux-2016 policies have one
//! `panic_notifier_list`: every notifier, by priority alone. The pvpanic
//! notifier is registered at the highest priority there, as Linux's
//! `drivers/misc/pvpanic` does, so on one list the hypervisor hears first.

/// The list a notifier belongs to under the three-list proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifierList {
    /// Extra information, watchdogs (`panic_info_notifier_list`).
    Info,
    /// Poke the hypervisor (`panic_hypervisor_notifier_list`).
    Hypervisor,
    /// Help a reboot (`panic_reboot_notifier_list`).
    Reboot,
}

impl NotifierList {
    /// Short name for log lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Hypervisor => "hypervisor",
            Self::Reboot => "reboot",
        }
    }
}

/// Highest priority (Linux `INT_MAX`, pvpanic's).
pub const PRIORITY_MAX: i32 = i32::MAX;

/// Most notifiers the kernel holds.
pub const MAX_NOTIFIERS: usize = 8;

/// One registered notifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notifier<F> {
    /// Its list under proposal-2022.
    pub list: NotifierList,
    /// Higher runs first.
    pub priority: i32,
    /// Name for log lines.
    pub name: &'static str,
    /// The callback.
    pub func: F,
}

/// Why a notifier was not registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifierError {
    /// All [`MAX_NOTIFIERS`] slots are used.
    Full,
}

/// All notifiers, kept sorted by descending priority (stable).
#[derive(Clone, Copy, Debug)]
pub struct NotifierTable<F: Copy> {
    slots: [Option<Notifier<F>>; MAX_NOTIFIERS],
    len: usize,
}

impl<F: Copy> Default for NotifierTable<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Copy> NotifierTable<F> {
    /// No notifiers.
    pub const fn new() -> Self {
        Self {
            slots: [None; MAX_NOTIFIERS],
            len: 0,
        }
    }

    /// Inserts `n` after every notifier of equal or higher priority.
    pub fn register(&mut self, n: Notifier<F>) -> Result<(), NotifierError> {
        if self.len >= MAX_NOTIFIERS {
            return Err(NotifierError::Full);
        }
        let mut at = self.len;
        while at > 0 {
            match self.slots.get(at - 1).copied().flatten() {
                Some(prev) if prev.priority < n.priority => {
                    if let Some(s) = self.slots.get_mut(at) {
                        *s = Some(prev);
                    }
                    at -= 1;
                }
                _ => break,
            }
        }
        if let Some(s) = self.slots.get_mut(at) {
            *s = Some(n);
        }
        self.len += 1;
        Ok(())
    }

    /// Every notifier in call order (the single Linux list).
    pub fn all(&self) -> impl Iterator<Item = Notifier<F>> + '_ {
        self.slots.iter().take(self.len).flatten().copied()
    }

    /// The notifiers of `list`, in call order.
    pub fn list(&self, list: NotifierList) -> impl Iterator<Item = Notifier<F>> + '_ {
        self.all().filter(move |n| n.list == list)
    }

    /// Notifier at call position `i` among those `filter` selects.
    pub fn nth(&self, list: Option<NotifierList>, i: usize) -> Option<Notifier<F>> {
        self.all()
            .filter(|n| list.is_none_or(|l| n.list == l))
            .nth(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(list: NotifierList, priority: i32, name: &'static str) -> Notifier<u8> {
        Notifier {
            list,
            priority,
            name,
            func: 0,
        }
    }

    #[test]
    fn single_list_puts_pvpanic_first() {
        let mut t = NotifierTable::new();
        t.register(n(NotifierList::Info, 0, "hang")).unwrap();
        t.register(n(NotifierList::Hypervisor, PRIORITY_MAX, "pvpanic"))
            .unwrap();
        t.register(n(NotifierList::Reboot, 0, "reboot")).unwrap();
        t.register(n(NotifierList::Info, 0, "fault")).unwrap();
        let names: Vec<_> = t.all().map(|x| x.name).collect();
        assert_eq!(names, ["pvpanic", "hang", "reboot", "fault"]);
        let info: Vec<_> = t.list(NotifierList::Info).map(|x| x.name).collect();
        assert_eq!(info, ["hang", "fault"]);
        assert_eq!(t.nth(Some(NotifierList::Info), 1).unwrap().name, "fault");
        assert_eq!(t.nth(None, 0).unwrap().name, "pvpanic");
        assert!(t.nth(Some(NotifierList::Hypervisor), 1).is_none());
    }

    #[test]
    fn full_table_is_refused() {
        let mut t = NotifierTable::new();
        for i in 0..MAX_NOTIFIERS {
            t.register(n(NotifierList::Info, i as i32, "x")).unwrap();
        }
        assert_eq!(
            t.register(n(NotifierList::Info, 0, "y")),
            Err(NotifierError::Full)
        );
        let prios: Vec<_> = t.all().map(|x| x.priority).collect();
        assert_eq!(prios, [7, 6, 5, 4, 3, 2, 1, 0]);
    }
}
