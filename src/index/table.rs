//! A compact keyed table: slots in a `Vec`, found through a hash table that
//! holds only slot numbers (4 bytes each), so that a key's text is stored
//! once, in its slot. Freed slots are reused.

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// A slot number that is no slot.
pub(super) const NONE: u32 = u32::MAX;

/// What a slot is found by: a kind byte and a text.
pub(super) trait Keyed: Default {
    /// The slot's key.
    fn key(&self) -> (u8, &str);
    /// Whether the slot's key is `key` (faster than comparing `key()`).
    fn is(&self, key: (u8, &str)) -> bool;
    /// Whether the slot is free.
    fn is_free(&self) -> bool;
}

/// The table.
#[derive(Debug)]
pub(super) struct Table<S> {
    /// Seeded per process: the keys are client-chosen, so their hashes must
    /// not be predictable (hash flooding).
    hasher: foldhash::fast::RandomState,
    /// Slot numbers, by the hash of their key.
    table: HashTable<u32>,
    /// The slots.
    slots: Vec<S>,
    /// Free slot numbers.
    free: Vec<u32>,
}

impl<S> Default for Table<S> {
    fn default() -> Self {
        Self {
            hasher: foldhash::fast::RandomState::default(),
            table: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

fn index(slot: u32) -> usize {
    usize::try_from(slot).unwrap_or(usize::MAX)
}

impl<S: Keyed> Table<S> {
    fn hash(&self, key: (u8, &str)) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The slot of `key`.
    pub(super) fn find(&self, key: (u8, &str)) -> Option<u32> {
        let hash = self.hash(key);
        self.table
            .find(hash, |&slot| self.slots[index(slot)].is(key))
            .copied()
    }

    /// The slot of `key`, made with `make` when missing.
    pub(super) fn find_or_insert(&mut self, key: (u8, &str), make: impl FnOnce() -> S) -> u32 {
        if let Some(slot) = self.find(key) {
            return slot;
        }
        let value = make();
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[index(slot)] = value;
                slot
            }
            None => {
                // More than 4 billion slots would not fit in memory first.
                let slot = u32::try_from(self.slots.len()).unwrap_or(NONE - 1);
                self.slots.push(value);
                slot
            }
        };
        let hash = self.hash(key);
        let (hasher, slots) = (&self.hasher, &self.slots);
        self.table
            .insert_unique(hash, slot, |&s| hasher.hash_one(slots[index(s)].key()));
        slot
    }

    /// Frees a slot.
    pub(super) fn remove(&mut self, slot: u32) {
        let Some(value) = self.slots.get(index(slot)) else {
            return;
        };
        if value.is_free() {
            return;
        }
        let hash = self.hash(value.key());
        if let Ok(entry) = self.table.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
        self.slots[index(slot)] = S::default();
        self.free.push(slot);
    }

    /// The sum of `owned` over the slots in use.
    pub(super) fn heap_bytes(&self, owned: impl Fn(&S) -> usize) -> usize {
        self.slots.iter().filter(|s| !s.is_free()).map(owned).sum()
    }

    /// A slot's value, unless free or out of range.
    pub(super) fn get(&self, slot: u32) -> Option<&S> {
        self.slots.get(index(slot)).filter(|s| !s.is_free())
    }

    /// A slot's value, mutably.
    pub(super) fn get_mut(&mut self, slot: u32) -> Option<&mut S> {
        self.slots.get_mut(index(slot)).filter(|s| !s.is_free())
    }

    /// Gives back what growing by doubling left unused (after the start-up
    /// load: up to half of the slots' memory).
    pub(super) fn shrink_to_fit(&mut self) {
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
        let (hasher, slots) = (&self.hasher, &self.slots);
        self.table
            .shrink_to(0, |&s| hasher.hash_one(slots[index(s)].key()));
    }

    /// Slots in use.
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// Bytes the table takes (slots, hash table, free list), not counting
    /// what its slots own on the heap.
    pub(super) fn bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<S>()
            + self.table.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.free.capacity() * std::mem::size_of::<u32>()
    }

    /// Slots made so far, in use or free (slot numbers are below it).
    #[cfg(test)]
    pub(super) fn slot_count(&self) -> usize {
        self.slots.len()
    }
}
