import CKVM
import Glibc
import Testing
@testable import KVM

/// Anonymous host memory for a guest, unmapped on deinit.
private final class HostMemory {
    let pointer: UnsafeMutableRawPointer
    let size: Int
    init(size: Int) throws {
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              p != MAP_FAILED else { throw KVMError.mmap("test guest memory", errno: errno) }
        pointer = p
        self.size = size
    }
    deinit { munmap(pointer, size) }
}

@Suite("KVM: system, VM and vCPU file descriptors")
struct KVMTests {
    @Test("/dev/kvm opens, speaks API version 12, and reports a kvm_run size, CPUID and MSRs")
    func hypervisor() throws {
        let kvm = try Hypervisor()
        #expect(ckvm_ioctl_none(kvm.fd, ckvm_req_GET_API_VERSION()) == 12)
        #expect(kvm.vcpuMmapSize >= 4096)
        #expect(kvm.check(.userMemory) > 0)
        #expect(kvm.check(.irqchip) > 0)
        #expect(throws: Never.self) { try kvm.require([.userMemory, .irqchip, .pit2, .ioeventfd, .irqfd]) }
        let cpuid = try kvm.supportedCPUID()
        #expect(cpuid.contains { $0.function == 0 } && cpuid.contains { $0.function == 1 })
        #expect(cpuid.contains { $0.function == 0x4000_0000 })    // KVM signature leaf
        let msrs = try kvm.msrIndexList()
        #expect(msrs.contains(0x10))                              // IA32_TIME_STAMP_COUNTER
        #expect(msrs.count == Set(msrs).count)
    }

    @Test("KVM_CHECK_EXTENSION of a capability that cannot exist is 0, not a trap")
    func checkNegative() throws {
        let kvm = try Hypervisor()
        #expect(kvm.check(rawCapability: -1) == 0)
        #expect(try kvm.createVM().check(rawCapability: -1) == 0)
    }

    @Test("opening a device that does not exist is .open with ENOENT; a non-KVM device fails the version ioctl")
    func openFailures() {
        #expect(throws: KVMError.open(path: "/nonexistent/kvm", errno: ENOENT)) { try Hypervisor(path: "/nonexistent/kvm") }
        #expect(throws: KVMError.ioctl("KVM_GET_API_VERSION", errno: ENOTTY)) { try Hypervisor(path: "/dev/null") }
    }

    @Test("KVMError descriptions name the call or path and the reason")
    func descriptions() {
        #expect(KVMError.ioctl("KVM_SET_USER_MEMORY_REGION", errno: EINVAL).description
                == "KVM_SET_USER_MEMORY_REGION failed: Invalid argument (errno 22)")
        #expect(KVMError.open(path: "/dev/kvm", errno: ENOENT).description.contains("is the kvm module loaded?"))
        #expect(KVMError.open(path: "/dev/kvm", errno: EACCES).description.contains("permission denied"))
        #expect(KVMError.open(path: "/dev/kvm", errno: EBUSY).description.hasPrefix("cannot open /dev/kvm: "))
        #expect(KVMError.apiVersion(11).description == "KVM API version 11 is not supported (need 12)")
        #expect(KVMError.missingCapability("KVM_CAP_IRQCHIP").description.contains("KVM_CAP_IRQCHIP"))
        #expect(KVMError.mmap("kvm_run of vCPU 0", errno: ENOMEM).description.hasPrefix("mmap of kvm_run of vCPU 0 failed"))
        #expect(KVMError.badStateSize("regs", expected: 144, got: 3).description == "regs state is 3 bytes, expected 144")
    }

    @Test("a VM takes a memory slot, an irqchip, a PIT and vCPUs; bad requests name the ioctl and errno")
    func virtualMachine() throws {
        let vm = try Hypervisor().createVM()
        let memory = try HostMemory(size: 2 << 20)
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, size: UInt64(memory.size), host: memory.pointer, logDirty: true)
        #expect(throws: KVMError.ioctl("KVM_SET_USER_MEMORY_REGION", errno: EINVAL)) {
            try vm.setMemoryRegion(slot: 1, guestAddress: 0x100_0000, size: 1000, host: memory.pointer, logDirty: false)
        }
        #expect(throws: KVMError.ioctl("KVM_IRQ_LINE", errno: ENXIO)) { try vm.setIRQLine(4, level: true) }
        try vm.setTSSAddress(0xfffb_d000)
        try vm.createIRQChip()
        try vm.createPIT2()
        try vm.setIRQLine(4, level: true)
        try vm.setIRQLine(4, level: false)

        let ioapic = try vm.irqChip(.ioapic)
        #expect(try vm.setIRQChip(ioapic) == .ioapic)
        #expect(try vm.irqChip(.ioapic) == ioapic)
        #expect(VirtualMachine.irqChipID(of: try vm.irqChip(.picSlave)) == .picSlave)
        #expect(throws: KVMError.badStateSize("irqchip", expected: ioapic.count, got: 10)) { try vm.setIRQChip([UInt8](repeating: 0, count: 10)) }
        let pit = try vm.pit()
        try vm.setPIT(pit)

        try vm.setClock(1_000_000_000)
        let clock = try vm.clock()
        #expect(clock >= 1_000_000_000 && clock < 60_000_000_000)

        let v0 = try vm.createVCPU(id: 0)
        let v1 = try vm.createVCPU(id: 1)
        #expect(v0.id == 0 && v1.id == 1)
        #expect(throws: KVMError.ioctl("KVM_CREATE_VCPU", errno: EEXIST)) { try vm.createVCPU(id: 0) }
        try v0.setCPUID(try vm.hypervisor.supportedCPUID())

        var bitmap = [UInt64](repeating: 0, count: 8)
        try bitmap.withUnsafeMutableBufferPointer { p throws(KVMError) in
            guard let base = p.baseAddress else { return }
            try vm.getDirtyLog(slot: 0, into: base)
        }
        #expect(bitmap.allSatisfy { $0 == 0 })              // nothing ran
    }

    /// A VM with `code` at 0x1000, 16 KiB of RAM, and one real-mode vCPU about to run it.
    fileprivate func realModeGuest(_ code: [UInt8]) throws -> (VirtualMachine, VCPU, HostMemory) {
        let vm = try Hypervisor().createVM()
        let memory = try HostMemory(size: 0x4000)
        memory.pointer.advanced(by: 0x1000).copyMemory(from: code, byteCount: code.count)
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, size: 0x4000, host: memory.pointer, logDirty: false)
        try vm.setTSSAddress(0xfffb_d000)
        let vcpu = try vm.createVCPU(id: 0)
        var sregs = try vcpu.specialRegisters()
        sregs.cs.base = 0
        sregs.cs.selector = 0
        sregs.ds.base = 0
        sregs.ds.selector = 0
        try vcpu.setSpecialRegisters(sregs)
        var regs = Registers()
        regs.rip = 0x1000
        try vcpu.setRegisters(regs)
        return (vm, vcpu, memory)
    }

    @Test("a real-mode guest exits for MMIO write/read, port out/in and HLT, with the right data")
    func runExits() throws {
        let code: [UInt8] = [
            0xc6, 0x06, 0x00, 0x80, 0x55,       // mov byte [0x8000], 0x55   (no RAM there: MMIO)
            0xa0, 0x00, 0x80,                   // mov al, [0x8000]
            0xe6, 0xf4,                         // out 0xf4, al
            0xe4, 0xf5,                         // in al, 0xf5
            0xe6, 0xf4,                         // out 0xf4, al
            0xf4,                               // hlt
        ]
        let (vm, vcpu, memory) = try realModeGuest(code)
        defer { withExtendedLifetime((vm, memory)) {} }

        func next() throws -> VCPUExit {
            while true {
                let exit = try vcpu.run()
                if case .interrupted = exit { continue }
                return exit
            }
        }
        guard case .mmioWrite(let a, let d) = try next() else { Issue.record("expected an MMIO write"); return }
        #expect(a == 0x8000 && Array(d) == [0x55])
        guard case .mmioRead(let ra, let rd) = try next() else { Issue.record("expected an MMIO read"); return }
        #expect(ra == 0x8000 && rd.count == 1)
        rd[0] = 0x77
        guard case .ioOut(let p1, let s1, let d1) = try next() else { Issue.record("expected an OUT"); return }
        #expect(p1 == 0xf4 && s1 == 1 && Array(d1) == [0x77])
        guard case .ioIn(let p2, let s2, let d2) = try next() else { Issue.record("expected an IN"); return }
        #expect(p2 == 0xf5 && s2 == 1 && d2.count == 1)
        d2[0] = 0x99
        guard case .ioOut(_, _, let d3) = try next() else { Issue.record("expected an OUT"); return }
        #expect(Array(d3) == [0x99])
        guard case .hlt = try next() else { Issue.record("expected HLT"); return }
        #expect(try vcpu.registers().rip == 0x1000 + UInt64(code.count))
    }

    @Test("vCPU state saved on one VM restores into another VM's vCPU: registers equal")
    func stateRoundTrip() throws {
        let kvm = try Hypervisor()
        let cpuid = try kvm.supportedCPUID()
        let msrList = try kvm.msrIndexList()

        let vmA = try kvm.createVM()
        try vmA.createIRQChip()
        let a = try vmA.createVCPU(id: 0)
        try a.setCPUID(cpuid)
        var regs = try a.registers()
        regs.rax = 0xdead_beef_cafe_f00d
        regs.rbx = 0x1234
        regs.r15 = 0x0f0f_0f0f
        regs.rip = 0x1000
        regs.rflags = 0x202
        try a.setRegisters(regs)
        var sregs = try a.specialRegisters()
        sregs.cs.base = 0x10000
        sregs.cs.selector = 0x1000
        try a.setSpecialRegisters(sregs)
        let msrIndices = a.readableMSRs(msrList)
        #expect(!msrIndices.isEmpty)
        let saved = try a.saveState(msrIndices: msrIndices)
        for (field, size) in [("regs", saved.regs.count), ("sregs", saved.sregs.count), ("fpu", saved.fpu.count),
                              ("xsave", saved.xsave.count), ("xcrs", saved.xcrs.count), ("lapic", saved.lapic.count),
                              ("events", saved.events.count), ("debugregs", saved.debugregs.count)] {
            #expect(VCPUState.sizes[field] == size, "\(field)")
        }

        let vmB = try kvm.createVM()
        try vmB.createIRQChip()
        let b = try vmB.createVCPU(id: 0)
        try b.setCPUID(cpuid)
        try b.restoreState(saved)
        let restored = try b.saveState(msrIndices: msrIndices)
        #expect(restored.regs == saved.regs)
        #expect(restored.sregs == saved.sregs)
        #expect(restored.xcrs == saved.xcrs)
        #expect(restored.debugregs == saved.debugregs)
        #expect(restored.mpState == saved.mpState)
        #expect(restored.msrs.map(\.index) == saved.msrs.map(\.index))
        let r = try b.registers()
        #expect(r.rax == 0xdead_beef_cafe_f00d && r.rbx == 0x1234 && r.r15 == 0x0f0f_0f0f && r.rip == 0x1000)
        #expect(try b.specialRegisters().cs.base == 0x10000)
    }

    @Test("restoreState checks every size before writing anything")
    func restoreSizes() throws {
        let kvm = try Hypervisor()
        let vm = try kvm.createVM()
        try vm.createIRQChip()
        let v = try vm.createVCPU(id: 0)
        try v.setCPUID(try kvm.supportedCPUID())
        let good = try v.saveState(msrIndices: [])
        var regs = try v.registers()
        regs.rax = 42
        try v.setRegisters(regs)

        var shortRegs = good
        shortRegs.regs = Array(good.regs.dropLast())
        #expect(throws: KVMError.badStateSize("regs", expected: good.regs.count, got: good.regs.count - 1)) {
            try v.restoreState(shortRegs)
        }
        var longLAPIC = good
        longLAPIC.lapic += [0]
        #expect(throws: KVMError.badStateSize("lapic", expected: good.lapic.count, got: good.lapic.count + 1)) {
            try v.restoreState(longLAPIC)
        }
        var noDebug = good
        noDebug.debugregs = []
        #expect(throws: KVMError.badStateSize("debugregs", expected: good.debugregs.count, got: 0)) {
            try v.restoreState(noDebug)
        }
        #expect(try v.registers().rax == 42)                // the refused restores wrote nothing
    }

    @Test("RawState.load refuses a wrong size and copies an exact one; bytes(of:) is its inverse")
    func rawState() throws {
        var x: UInt64 = 0
        #expect(throws: KVMError.badStateSize("thing", expected: 8, got: 3)) { try RawState.load([1, 2, 3], into: &x, name: "thing") }
        #expect(throws: KVMError.badStateSize("thing", expected: 8, got: 9)) { try RawState.load([UInt8](repeating: 0, count: 9), into: &x, name: "thing") }
        #expect(x == 0)
        try RawState.load([1, 0, 0, 0, 0, 0, 0, 0x80], into: &x, name: "thing")
        #expect(x == 0x8000_0000_0000_0001)
        #expect(RawState.bytes(of: x) == [1, 0, 0, 0, 0, 0, 0, 0x80])
        var regs = kvm_regs()
        regs.rip = 0xfff0
        var copy = kvm_regs()
        try RawState.load(RawState.bytes(of: regs), into: &copy, name: "regs")
        #expect(copy.rip == 0xfff0)
    }
}
