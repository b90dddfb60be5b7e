// Sample-mapping builder for ERNIE pretraining (pybind11 extension `data_tools._helpers`).
//
// Builds ONE epoch of samples over the documents [doc_lo, doc_hi): each row is
// (doc, first sentence, end sentence (exclusive), target length).  The epoch
// order is *not* decided here: the dataset permutes rows per epoch with a
// generator keyed on (seed, epoch), so the stream does not depend on how many
// samples a run asks for.
//
// Target lengths come from a counter-based generator (splitmix64 finaliser) keyed
// on (seed, global doc index): every document's draws are independent of the
// other documents, of the split and of the thread count, and the pure-Python
// `build_mapping_py` reproduces them bit for bit.
//
// Compiled when the package is installed (setup.py); never at run time.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

struct DocRng {
  uint64_t key;
  uint64_t counter = 0;
  DocRng(uint64_t seed, uint64_t doc) : key(mix64(mix64(seed) ^ doc)) {}
  uint64_t next() {
    ++counter;
    return mix64(key + counter * kGolden);
  }
};

// Target length: max_num_tokens, or with probability short_threshold / 2^32 a
// uniform length in [2, max_num_tokens].
inline int64_t target_len(DocRng &rng, uint64_t short_threshold, int64_t max_num_tokens) {
  if (short_threshold == 0) return max_num_tokens;
  const uint64_t x = rng.next();
  if ((x >> 32) < short_threshold) {
    const uint64_t y = rng.next();
    return 2 + static_cast<int64_t>(y % static_cast<uint64_t>(max_num_tokens - 1));
  }
  return max_num_tokens;
}

template <typename Out>
py::tuple build_mapping_impl(const int64_t *docs, const int32_t *lens, int64_t doc_lo, int64_t doc_hi,
                             int64_t max_num_tokens, uint64_t short_threshold, uint64_t seed,
                             int64_t min_num_sent, int64_t long_sentence_len) {
  std::vector<Out> rows;
  int64_t skipped_short = 0, skipped_long = 0;
  {
    py::gil_scoped_release release;
    // First pass: count (cheap) so the vector is allocated once.
    int64_t estimate = 0;
    for (int64_t d = doc_lo; d < doc_hi; ++d) estimate += (docs[d + 1] - docs[d] + 1) / 2;
    rows.reserve(static_cast<size_t>(estimate > 0 ? estimate : 1) * 4);

    for (int64_t d = doc_lo; d < doc_hi; ++d) {
      const int64_t first = docs[d], last = docs[d + 1];
      const int64_t nsent = last - first;
      if (nsent < min_num_sent) {
        ++skipped_short;
        continue;
      }
      bool has_long = false;
      for (int64_t s = first; s < last; ++s) {
        if (lens[s] > long_sentence_len) {
          has_long = true;
          break;
        }
      }
      if (has_long) {
        ++skipped_long;
        continue;
      }
      DocRng rng(seed, static_cast<uint64_t>(d));
      int64_t target = target_len(rng, short_threshold, max_num_tokens);
      int64_t start = first, seq_len = 0, num_sent = 0;
      for (int64_t s = first; s < last; ++s) {
        seq_len += lens[s];
        ++num_sent;
        const int64_t remain = last - s - 1;
        if ((seq_len >= target && remain > 1 && num_sent >= min_num_sent) || remain == 0) {
          rows.push_back(static_cast<Out>(d));
          rows.push_back(static_cast<Out>(start));
          rows.push_back(static_cast<Out>(s + 1));
          rows.push_back(static_cast<Out>(target));
          start = s + 1;
          target = target_len(rng, short_threshold, max_num_tokens);
          seq_len = 0;
          num_sent = 0;
        }
      }
    }
  }
  const py::ssize_t n = static_cast<py::ssize_t>(rows.size() / 4);
  py::array_t<Out> out({n, static_cast<py::ssize_t>(4)});
  if (n > 0) std::copy(rows.begin(), rows.end(), out.mutable_data());
  return py::make_tuple(out, skipped_short, skipped_long);
}

py::tuple build_mapping(py::array_t<int64_t, py::array::c_style | py::array::forcecast> docs,
                        py::array_t<int32_t, py::array::c_style | py::array::forcecast> lens, int64_t doc_lo,
                        int64_t doc_hi, int64_t max_num_tokens, uint64_t short_threshold, uint64_t seed,
                        int64_t min_num_sent, int64_t long_sentence_len, bool use_int64) {
  if (docs.ndim() != 1 || lens.ndim() != 1) throw std::invalid_argument("docs and lens must be 1-D");
  const int64_t n_docs = static_cast<int64_t>(docs.shape(0)) - 1;
  if (doc_lo < 0 || doc_hi < doc_lo || doc_hi > n_docs)
    throw std::invalid_argument("document range [" + std::to_string(doc_lo) + ", " + std::to_string(doc_hi) +
                                ") outside [0, " + std::to_string(n_docs) + ")");
  if (max_num_tokens < 2) throw std::invalid_argument("max_num_tokens must be >= 2");
  if (short_threshold > (1ULL << 32)) throw std::invalid_argument("short_threshold must be <= 2^32");
  const int64_t *d = docs.data();
  if (n_docs >= 0 && d[n_docs] > static_cast<int64_t>(lens.shape(0)))
    throw std::invalid_argument("docs[-1] exceeds the number of sentences");
  if (use_int64)
    return build_mapping_impl<int64_t>(d, lens.data(), doc_lo, doc_hi, max_num_tokens, short_threshold, seed,
                                       min_num_sent, long_sentence_len);
  return build_mapping_impl<int32_t>(d, lens.data(), doc_lo, doc_hi, max_num_tokens, short_threshold, seed,
                                     min_num_sent, long_sentence_len);
}

}  // namespace

PYBIND11_MODULE(_helpers, m) {
  m.doc() = "ERNIE pretraining data helpers (sample mapping)";
  m.attr("MAPPING_ALGORITHM_VERSION") = 1;
  m.def("build_mapping", &build_mapping, py::arg("docs"), py::arg("lens"), py::arg("doc_lo"), py::arg("doc_hi"),
        py::arg("max_num_tokens"), py::arg("short_threshold"), py::arg("seed"), py::arg("min_num_sent"),
        py::arg("long_sentence_len"), py::arg("use_int64"),
        "One epoch of (doc, start_sentence, end_sentence, target_len) rows; returns "
        "(rows, n_docs_skipped_too_few_sentences, n_docs_skipped_long_sentence).");
}
