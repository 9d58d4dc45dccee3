import Foundation
import Glibc
import Machine

/// Faults guest RAM in ahead of round 0's stream, on its own thread, so that the thread
/// placing pages writes into memory that is already there: on a fresh target the kernel's
/// zeroing of every first-touched page is the receiver's largest cost. It follows the stream
/// only where the stream is dense (a window whose every page carried data): an idle guest's
/// sparse pages never make it populate memory the guest does not use. What it populates it
/// first asks to be backed by transparent huge pages (where the host allows), so the kernel
/// faults 2 MiB at a time; sparse pages stay 4 KiB, so an idle guest's few pages never cost
/// whole huge pages. Uses MADV_POPULATE_WRITE (Linux 5.14+); on older kernels it does nothing.
final class Populator: @unchecked Sendable {
    /// MADV_POPULATE_WRITE from <linux/mman.h>.
    static let populateWrite: Int32 = 23
    /// How far ahead of the last dense window it populates.
    static let aheadBytes = 16 << 20
    static let chunkBytes = 2 << 20

    private let memory: GuestMemory
    private let cond = NSCondition()
    private var queue: [(UnsafeMutableRawPointer, Int)] = []
    private var stopped = false
    private var unsupported = false
    /// Per region (by index): offset up to which population has been queued (under `cond`).
    private var frontier: [UInt64]
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)

    init(memory: GuestMemory) {
        self.memory = memory
        frontier = memory.regions.map { _ in 0 }
        let t = Thread { [self] in work() }
        t.name = "populate"
        thread = t
        t.start()
    }

    /// Called after a page batch was applied (the payload already validated); from any number
    /// of receiving threads at once.
    func follow(_ payload: [UInt8]) {
        guard payload.count >= PageBatch.headerSize else { return }
        let (pfn, window, data) = payload.withUnsafeBytes { p in
            (UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt64.self)),
             Int(UInt32(bigEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt32.self))),
             Int(UInt32(bigEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt32.self))))
        }
        guard data == window, window > 0 else { return }
        let gpa = pfn &* UInt64(PageBatch.pageSize)
        let length = UInt64(window * PageBatch.pageSize)
        guard let (region, offset) = memory.locate(GuestAddress(gpa), length: length),
              let index = memory.regions.firstIndex(where: { $0 === region }) else { return }
        let to = min(region.size, offset + length + UInt64(Self.aheadBytes))
        cond.lock()
        defer { cond.unlock() }
        let from = max(frontier[index], offset + length)
        guard from < to, !unsupported, !stopped else { return }
        frontier[index] = to
        queue.append((region.host + Int(from), Int(to - from)))
        cond.signal()
    }

    /// Stops and joins the thread (what is queued is dropped).
    func stop() {
        cond.lock()
        let wasRunning = !stopped
        stopped = true
        queue.removeAll()
        cond.signal()
        cond.unlock()
        if wasRunning { finished.wait() }
    }

    private func work() {
        defer { finished.signal() }
        while true {
            cond.lock()
            while queue.isEmpty && !stopped { cond.wait() }
            if stopped { cond.unlock(); return }
            let (start, length) = queue.removeFirst()
            cond.unlock()
            var done = 0
            while done < length {
                let n = min(Self.chunkBytes, length - done)
                if HugePages.available { _ = madvise(start + done, n, MADV_HUGEPAGE) }
                if madvise(start + done, n, Self.populateWrite) != 0 && errno == EINVAL {
                    cond.lock(); unsupported = true; queue.removeAll(); cond.unlock()
                    return
                }
                done += n
                cond.lock(); let halt = stopped; cond.unlock()
                if halt { return }
            }
        }
    }
}
