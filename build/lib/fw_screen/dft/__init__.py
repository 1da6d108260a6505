"""DFT: the result schema shared by Quantum ESPRESSO and VASP, the DFT hull, the QE engine and the VASP results.
"""
