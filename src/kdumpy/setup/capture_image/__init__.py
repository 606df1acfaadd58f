"""kdumpy's own capture image: the initramfs the capture kernel boots.

It holds only what saving the dump needs: the target's block and filesystem modules
(:mod:`.modules`), static busybox, the filesystem's fsck and the Python kdumpy runs in,
trimmed to what ``kdumpy capture`` imports (:mod:`.userspace`), and an ``/init`` that mounts
only the target, runs the capture under a deadline and ends in the final or failure action
(:mod:`.init`). :mod:`.plan` decides all of it from sysfs and the config; :mod:`.digest`
tells when a built image (:mod:`.build`, :mod:`.tree`) no longer matches.
"""
