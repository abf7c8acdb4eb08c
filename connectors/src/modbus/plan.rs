//! Which read requests one Modbus poll makes: adjacent registers of the same table are coalesced
//! into as few requests as the protocol limits allow (125 registers, 2000 bits per request).

use super::config::{RegisterConfig, Table};

/// One read request and the configured registers it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub table: Table,
    /// First address read.
    pub start: u16,
    /// How many registers (or bits) are read.
    pub count: u16,
    /// Indices into the config's `registers` that lie inside this request.
    pub items: Vec<usize>,
}

impl Batch {
    /// `holding 10` for one address, `holding 10-19` for a range: how errors name the request.
    pub fn key(&self) -> String {
        if self.count <= 1 {
            format!("{} {}", self.table, self.start)
        } else {
            let last = u32::from(self.start) + u32::from(self.count) - 1;
            format!("{} {}-{last}", self.table, self.start)
        }
    }

    /// One request per register, so that an exception can be pinned on the register causing it.
    /// `None` when this request already reads a single register.
    pub fn split(&self, registers: &[RegisterConfig]) -> Option<Vec<Batch>> {
        let one = |i: usize| {
            registers.get(i).map(|r| Batch {
                table: r.table,
                start: r.address,
                count: r.width(),
                items: vec![i],
            })
        };
        let first = registers.get(*self.items.first()?)?;
        let single = self.items.iter().all(|&i| {
            registers
                .get(i)
                .is_some_and(|r| r.address == first.address && r.width() == first.width())
        });
        if single {
            return None;
        }
        Some(self.items.iter().filter_map(|&i| one(i)).collect())
    }
}

/// The fewest requests that read every register: registers sorted per table, and a request
/// extended while the next register starts at or before its end (adjacent or overlapping) and the
/// request stays within the table's limit. Gaps are never bridged: an address the config does not
/// name may not exist on the device and would fail the whole request.
pub fn plan(registers: &[RegisterConfig]) -> Vec<Batch> {
    let mut order: Vec<usize> = (0..registers.len()).collect();
    order.sort_by_key(|&i| {
        let r = &registers[i];
        (r.table, r.address, r.width())
    });
    let mut batches: Vec<Batch> = Vec::new();
    for i in order {
        let r = &registers[i];
        let start = u32::from(r.address);
        let end = start + u32::from(r.width());
        if let Some(b) = batches.last_mut()
            && b.table == r.table
        {
            let b_end = u32::from(b.start) + u32::from(b.count);
            let new_end = b_end.max(end);
            if start <= b_end && new_end - u32::from(b.start) <= u32::from(r.table.max_read()) {
                // Fits: new_end - start <= max_read <= 2000.
                b.count = (new_end - u32::from(b.start)) as u16;
                b.items.push(i);
                continue;
            }
        }
        batches.push(Batch {
            table: r.table,
            start: r.address,
            count: r.width(),
            items: vec![i],
        });
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::super::config::{Order, ValueType};
    use super::*;

    fn reg(table: Table, address: u16, ty: Option<ValueType>) -> RegisterConfig {
        RegisterConfig {
            sensor: format!("{table}{address}"),
            table,
            address,
            value_type: ty,
            word_order: Order::Big,
            byte_order: Order::Big,
            scale: 1.0,
            offset: 0.0,
            unit: None,
        }
    }

    fn spans(b: &[Batch]) -> Vec<(Table, u16, u16)> {
        b.iter().map(|b| (b.table, b.start, b.count)).collect()
    }

    #[test]
    fn adjacent_registers_share_a_request_and_gaps_split() {
        let regs = vec![
            reg(Table::Holding, 4, Some(ValueType::F32)), // 4-5
            reg(Table::Holding, 0, None),                 // 0
            reg(Table::Holding, 1, Some(ValueType::U32)), // 1-2
            reg(Table::Holding, 3, Some(ValueType::I16)), // 3
            reg(Table::Holding, 10, None),                // gap before 10
            reg(Table::Input, 6, None),                   // other table, same addresses
            reg(Table::Input, 7, None),
            reg(Table::Coil, 0, None),
            reg(Table::Coil, 1, None),
            reg(Table::Discrete, 5, None),
        ];
        let b = plan(&regs);
        assert_eq!(
            spans(&b),
            [
                (Table::Holding, 0, 6),
                (Table::Holding, 10, 1),
                (Table::Input, 6, 2),
                (Table::Coil, 0, 2),
                (Table::Discrete, 5, 1),
            ]
        );
        assert_eq!(b[0].items, [1, 2, 3, 0]);
        assert_eq!(b[0].key(), "holding 0-5");
        assert_eq!(b[1].key(), "holding 10");
    }

    #[test]
    fn overlapping_registers_are_read_once() {
        let regs = vec![
            reg(Table::Holding, 0, Some(ValueType::U32)),
            reg(Table::Holding, 1, None),
            reg(Table::Holding, 0, Some(ValueType::F32)),
        ];
        let b = plan(&regs);
        assert_eq!(spans(&b), [(Table::Holding, 0, 2)]);
        assert_eq!(b[0].items.len(), 3);
    }

    #[test]
    fn requests_stay_within_the_protocol_limits() {
        let words: Vec<_> = (0..300).map(|a| reg(Table::Input, a, None)).collect();
        assert_eq!(
            spans(&plan(&words)),
            [
                (Table::Input, 0, 125),
                (Table::Input, 125, 125),
                (Table::Input, 250, 50)
            ]
        );
        // A 32-bit value never straddles two requests.
        let mut pairs: Vec<_> = (0..63)
            .map(|k| reg(Table::Holding, 2 * k, Some(ValueType::U32)))
            .collect();
        pairs.push(reg(Table::Holding, 126, None));
        assert_eq!(
            spans(&plan(&pairs)),
            [(Table::Holding, 0, 124), (Table::Holding, 124, 3)]
        );
        let bits: Vec<_> = (0..4500).map(|a| reg(Table::Coil, a, None)).collect();
        assert_eq!(
            spans(&plan(&bits)),
            [
                (Table::Coil, 0, 2000),
                (Table::Coil, 2000, 2000),
                (Table::Coil, 4000, 500)
            ]
        );
    }

    #[test]
    fn a_batch_splits_into_one_request_per_register() {
        let regs = vec![
            reg(Table::Holding, 39, None),
            reg(Table::Holding, 40, Some(ValueType::U32)),
            reg(Table::Holding, 42, None),
        ];
        let b = plan(&regs);
        assert_eq!(b.len(), 1);
        let parts = b[0].split(&regs).unwrap();
        assert_eq!(
            spans(&parts),
            [
                (Table::Holding, 39, 1),
                (Table::Holding, 40, 2),
                (Table::Holding, 42, 1)
            ]
        );
        assert!(parts.iter().all(|p| p.split(&regs).is_none()));
    }
}
