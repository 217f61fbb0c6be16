# BPF programs as bpftool skeletons, built with the project.
#
#   ktrust_bpf_skeleton(<target> NAME <name> SOURCES <x.bpf.c>... [INCLUDES <dir>...])
#
# Compiles each source with clang to a CO-RE object (against a vmlinux.h dumped
# from this machine's kernel BTF into the build tree), links the objects into
# one with `bpftool gen object` (so maps defined in one source and declared
# extern in the others become one set), and generates <name>.skel.h.
# <target> is an INTERFACE library: linking it puts the skeleton on the include
# path as a system header (bpftool's C does not meet the C++ warning flags).
include_guard(GLOBAL)

find_program(KTRUST_BPF_CLANG NAMES clang clang-14 REQUIRED)
find_program(KTRUST_BPFTOOL NAMES bpftool PATHS /usr/sbin /sbin REQUIRED)
set(KTRUST_VMLINUX_BTF /sys/kernel/btf/vmlinux
    CACHE FILEPATH "Kernel BTF that vmlinux.h is generated from (CO-RE: any BTF kernel works)")

# Cache entries: this file is included from several directories, and plain
# variables would be visible only in the first.
set(KTRUST_BPF_GEN_DIR ${CMAKE_BINARY_DIR}/bpf-gen CACHE INTERNAL "")
set(KTRUST_VMLINUX_H ${KTRUST_BPF_GEN_DIR}/vmlinux/vmlinux.h CACHE INTERNAL "")

# Generated once: CO-RE relocates field accesses at load time, so the BTF of
# the build machine does not have to be the target's.
add_custom_command(
  OUTPUT ${KTRUST_VMLINUX_H}
  COMMAND ${CMAKE_COMMAND} -E make_directory ${KTRUST_BPF_GEN_DIR}/vmlinux
  COMMAND sh -c "'${KTRUST_BPFTOOL}' btf dump file '${KTRUST_VMLINUX_BTF}' format c > '${KTRUST_VMLINUX_H}.tmp'"
  COMMAND ${CMAKE_COMMAND} -E rename ${KTRUST_VMLINUX_H}.tmp ${KTRUST_VMLINUX_H}
  COMMENT "Generating vmlinux.h from ${KTRUST_VMLINUX_BTF}"
  VERBATIM)
add_custom_target(ktrust_vmlinux_h DEPENDS ${KTRUST_VMLINUX_H})

function(ktrust_bpf_skeleton target)
  cmake_parse_arguments(ARG "" "NAME" "SOURCES;INCLUDES" ${ARGN})
  if(NOT ARG_NAME OR NOT ARG_SOURCES)
    message(FATAL_ERROR "ktrust_bpf_skeleton(${target}): NAME and SOURCES are required")
  endif()
  set(out_dir ${KTRUST_BPF_GEN_DIR}/${ARG_NAME})
  set(include_flags -I${KTRUST_BPF_GEN_DIR}/vmlinux -I${PROJECT_SOURCE_DIR}/include
                    -I${PROJECT_SOURCE_DIR}/bpf)
  foreach(dir IN LISTS ARG_INCLUDES)
    list(APPEND include_flags -I${dir})
  endforeach()

  set(objects)
  foreach(src IN LISTS ARG_SOURCES)
    get_filename_component(src_abs ${src} ABSOLUTE)
    get_filename_component(stem ${src_abs} NAME_WE)
    # Per-source objects in their own directory: a source may share the
    # skeleton's name.
    set(obj ${out_dir}/objects/${stem}.bpf.o)
    add_custom_command(
      OUTPUT ${obj}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${out_dir}/objects
      # -g: BTF for CO-RE and the skeleton; -mcpu=v3: 32-bit jumps and ALU.
      COMMAND ${KTRUST_BPF_CLANG} -g -O2 -target bpf -mcpu=v3 -D__TARGET_ARCH_x86 -Wall -Werror
              ${include_flags} -MD -MF ${obj}.d -c ${src_abs} -o ${obj}
      DEPENDS ${src_abs} ${KTRUST_VMLINUX_H} ktrust_vmlinux_h
      DEPFILE ${obj}.d
      COMMENT "Compiling BPF ${stem}.bpf.c"
      VERBATIM)
    list(APPEND objects ${obj})
  endforeach()

  set(linked ${out_dir}/${ARG_NAME}.bpf.o)
  set(skel ${out_dir}/${ARG_NAME}.skel.h)
  add_custom_command(
    OUTPUT ${linked}
    COMMAND ${KTRUST_BPFTOOL} gen object ${linked} ${objects}
    DEPENDS ${objects}
    COMMENT "Linking BPF ${ARG_NAME}.bpf.o"
    VERBATIM)
  add_custom_command(
    OUTPUT ${skel}
    COMMAND sh -c "'${KTRUST_BPFTOOL}' gen skeleton '${linked}' name '${ARG_NAME}' > '${skel}.tmp'"
    COMMAND ${CMAKE_COMMAND} -E rename ${skel}.tmp ${skel}
    DEPENDS ${linked}
    COMMENT "Generating ${ARG_NAME}.skel.h"
    VERBATIM)
  add_custom_target(${target}_gen DEPENDS ${skel})

  add_library(${target} INTERFACE)
  target_include_directories(${target} SYSTEM INTERFACE ${out_dir})
  add_dependencies(${target} ${target}_gen)
endfunction()
