import Foundation

/// Registers a machine's memory slots (built with `deferMemorySlots`) on a thread of its own: a
/// slot made after the irqchip waits for a grace period KVM began then (milliseconds on a nested
/// host), which receiving the first pages of a migration can hide.
public final class SlotRegistration: @unchecked Sendable {
    private let done = NSCondition()
    private var result: Result<Void, VMError>?

    public convenience init(vm: VM) {
        self.init { () throws(VMError) in try vm.registerMemorySlots() }
    }

    init(register: @escaping @Sendable () throws(VMError) -> Void) {
        let t = Thread { [self] in
            let r: Result<Void, VMError>
            do throws(VMError) { try register(); r = .success(()) } catch { r = .failure(error) }
            done.lock(); result = r; done.broadcast(); done.unlock()
        }
        t.name = "memslots"
        t.start()
    }

    /// Waits until the slots exist; throws what KVM refused.
    public func waitForSlots() throws(VMError) {
        done.lock()
        while result == nil { done.wait() }
        let r = result
        done.unlock()
        if case .failure(let e)? = r { throw e }
    }
}
